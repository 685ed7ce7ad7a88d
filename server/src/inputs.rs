//! A job's chunk inputs, gathered one at a time under the documented limits, whatever they come
//! from: the `inputs` array of a JSON submission ([`InputsSeed`], a streaming serde visitor) or
//! the rows of a dataset file ([`crate::datasets`]).
//!
//! Nothing here ever holds more than one input as a [`Value`]: each is checked against the
//! kernel, turned into its canonical text and dropped. A single input is parsed under a byte
//! budget ([`BoundedValue`]), so `{"inputs": [[0,0,0,...]]}` is refused after about one input's
//! worth of values instead of building tens of millions of them (finding M5 of the security
//! review).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::Error;
use crate::limits::Limits;
use crate::store::Program;

/// Where inputs come from, for error messages that name the offending one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `inputs` array of a JSON body: `inputs[i]`.
    JsonArray,
    /// The rows of a dataset file: `row n`, counted from 1 (row 1 is chunk 0).
    Dataset,
}

impl Origin {
    /// How an error message names input `index` (0-based).
    pub fn name(self, index: usize) -> String {
        match self {
            Origin::JsonArray => format!("inputs[{index}]"),
            Origin::Dataset => format!("row {}", index + 1),
        }
    }
}

/// The canonical texts of a job's inputs, collected under the limits.
#[derive(Debug)]
pub struct InputCollector<'a> {
    limits: &'a Limits,
    /// The built-in kernel whose inputs are checked here; a module's are its own business (a
    /// module that refuses an input fails that chunk, the same way on every worker).
    kernel: Option<&'a str>,
    origin: Origin,
    inputs: Vec<String>,
}

impl<'a> InputCollector<'a> {
    /// A collector for a job running `program`.
    pub fn new(limits: &'a Limits, program: &'a Program, origin: Origin) -> Self {
        let kernel = match program {
            Program::Kernel(name) => Some(name.as_str()),
            Program::Module { .. } => None,
        };
        InputCollector {
            limits,
            kernel,
            origin,
            inputs: Vec::new(),
        }
    }

    /// Inputs collected so far.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether none was collected.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Whether the job holds as many inputs as it may.
    pub fn is_full(&self) -> bool {
        self.inputs.len() >= self.limits.max_inputs_per_job
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        self.limits
    }

    /// How error messages name the next input.
    pub fn next_name(&self) -> String {
        self.origin.name(self.inputs.len())
    }

    /// Room for `additional` more inputs (when the source knows its size).
    pub fn reserve(&mut self, additional: usize) {
        self.inputs
            .reserve(additional.min(self.limits.max_inputs_per_job));
    }

    /// The error for a job with `count` inputs, over the limit.
    pub fn too_many(&self, count: impl fmt::Display) -> Error {
        Error::TooLarge(format!(
            "a job may have at most {} inputs, this one has {count}",
            self.limits.max_inputs_per_job
        ))
    }

    /// The error for the next input when it is over the size limit before it was read whole.
    pub fn oversized_next(&self) -> Error {
        Error::TooLarge(format!(
            "{} is more than {max} bytes; an input may be at most {max} bytes",
            self.next_name(),
            max = self.limits.max_input_bytes
        ))
    }

    /// A byte budget for parsing the next input with [`BoundedValue`].
    pub fn budget(&self) -> Cell<isize> {
        Cell::new(isize::try_from(self.limits.max_input_bytes).unwrap_or(isize::MAX))
    }

    /// Check `input` and keep its canonical text.
    pub fn push(&mut self, input: &Value) -> Result<(), Error> {
        if self.is_full() {
            return Err(self.too_many(format!("more than {}", self.limits.max_inputs_per_job)));
        }
        let canonical = grid_protocol::canonical_json(input);
        if canonical.len() > self.limits.max_input_bytes {
            return Err(Error::TooLarge(format!(
                "{} is {} bytes; an input may be at most {} bytes",
                self.next_name(),
                canonical.len(),
                self.limits.max_input_bytes
            )));
        }
        if let Some(kernel) = self.kernel {
            grid_kernels::validate(kernel, input).map_err(|error| {
                Error::invalid("invalid_input", format!("{}: {error}", self.next_name()))
            })?;
        }
        self.inputs.push(canonical);
        Ok(())
    }

    /// The collected inputs, in order.
    pub fn finish(self) -> Vec<String> {
        self.inputs
    }
}

/// Parses one JSON value while charging a lower bound of its canonical size to a budget, and
/// fails as soon as the budget is spent: the value is then certainly over the input limit,
/// and at most about the limit's worth of values was built.
#[derive(Debug, Clone, Copy)]
pub struct BoundedValue<'b> {
    /// Bytes left; negative once spent.
    pub budget: &'b Cell<isize>,
}

/// The message of the serde error a spent budget raises (the caller replaces it).
const BUDGET_SPENT: &str = "the input is over the size limit";

impl BoundedValue<'_> {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let left = self
            .budget
            .get()
            .saturating_sub(isize::try_from(bytes).unwrap_or(isize::MAX));
        self.budget.set(left);
        if left < 0 {
            Err(E::custom(BUDGET_SPENT))
        } else {
            Ok(())
        }
    }

    /// Whether the budget was spent (the parse failed for that reason).
    pub fn spent(&self) -> bool {
        self.budget.get() < 0
    }
}

impl<'de> DeserializeSeed<'de> for BoundedValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BoundedValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        self.charge(if value { 4 } else { 5 })?;
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        self.charge(1)?;
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        self.charge(1)?;
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        self.charge(1)?;
        // As serde_json's own `Value` does: JSON text cannot hold a non-finite number anyway.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.charge(value.len() + 2)?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        self.charge(value.len() + 2)?;
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.charge(4)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(2)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            if !items.is_empty() {
                self.charge(1)?;
            }
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(2)?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // Quotes and colon, and a comma before every member but the first.
            self.charge(key.len() + 3 + usize::from(!object.is_empty()))?;
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The `inputs` array of a JSON submission, read element by element into `collector`. A
/// failure the API must answer with its own status is left in `failure` (the serde error
/// that aborts the parse only carries it out).
#[derive(Debug)]
pub struct InputsSeed<'c, 'a> {
    /// Where the inputs go.
    pub collector: &'c mut InputCollector<'a>,
    /// The API error behind an aborted parse, if it was ours.
    pub failure: &'c mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for InputsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of inputs, one JSON value per chunk")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            if self.collector.is_full() {
                // Count the rest without building anything, so the message says how many.
                let mut count = self.collector.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                if count > self.collector.len() {
                    *self.failure = Some(self.collector.too_many(count));
                    return Err(de::Error::custom("too many inputs"));
                }
                return Ok(());
            }
            let budget = self.collector.budget();
            let bounded = BoundedValue { budget: &budget };
            let input = match seq.next_element_seed(bounded) {
                Ok(Some(input)) => input,
                Ok(None) => return Ok(()),
                Err(error) => {
                    if bounded.spent() {
                        *self.failure = Some(self.collector.oversized_next());
                    }
                    return Err(error);
                }
            };
            if let Err(error) = self.collector.push(&input) {
                *self.failure = Some(error);
                return Err(de::Error::custom("input refused"));
            }
        }
    }
}

/// Walks a JSON submission's top-level object and feeds its `inputs` member to an
/// [`InputsSeed`]; every other member is skipped (the job's fields are read beforehand).
/// Returns whether the object had `inputs`.
#[derive(Debug)]
pub struct SubmissionInputs<'c, 'a> {
    /// See [`InputsSeed::collector`].
    pub collector: &'c mut InputCollector<'a>,
    /// See [`InputsSeed::failure`].
    pub failure: &'c mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for SubmissionInputs<'_, '_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SubmissionInputs<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a job: a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "inputs" && !found {
                found = true;
                map.next_value_seed(InputsSeed {
                    collector: &mut *self.collector,
                    failure: &mut *self.failure,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Read the `inputs` of a JSON submission `body` (already known to be well-formed and to
/// hold valid fields) into `collector`.
pub fn read_json_inputs(body: &[u8], collector: &mut InputCollector<'_>) -> Result<bool, Error> {
    let mut failure = None;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = SubmissionInputs {
        collector,
        failure: &mut failure,
    }
    .deserialize(&mut deserializer)
    .and_then(|found| deserializer.end().map(|()| found));
    match (parsed, failure) {
        (_, Some(error)) => Err(error),
        (Ok(found), None) => Ok(found),
        (Err(error), None) => Err(json_error(&error)),
    }
}

/// A serde_json error as the API answers it: 400 for text that is not JSON, 422 for JSON of
/// the wrong shape.
pub fn json_error(error: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => Error::invalid("invalid_field", error.to_string()),
        Category::Syntax | Category::Eof | Category::Io => Error::MalformedJson(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn limits(inputs: usize, bytes: usize) -> Limits {
        Limits {
            max_inputs_per_job: inputs,
            max_input_bytes: bytes,
            ..Limits::default()
        }
    }

    fn read(body: &str, limits: &Limits, kernel: &str) -> Result<Vec<String>, Error> {
        let program = Program::Kernel(kernel.into());
        let mut collector = InputCollector::new(limits, &program, Origin::JsonArray);
        read_json_inputs(body.as_bytes(), &mut collector)?;
        Ok(collector.finish())
    }

    #[test]
    fn inputs_come_out_canonical_whatever_the_order_of_members() {
        let limits = limits(10, 1024);
        let body = r#"{"inputs": [{"b": 1, "a": [true, null, 2.5, "x"]}, 3], "kernel": "echo"}"#;
        assert_eq!(
            read(body, &limits, "echo").unwrap(),
            vec![
                r#"{"a":[true,null,2.5,"x"],"b":1}"#.to_owned(),
                "3".to_owned()
            ]
        );
    }

    #[test]
    fn bounded_values_equal_serde_json_values() {
        let value = json!({"k": [1, -2, 3.5, "s\"q", {"n": null, "t": false}], "e": {}, "a": []});
        let text = value.to_string();
        let budget = Cell::new(10_000);
        let parsed = BoundedValue { budget: &budget }
            .deserialize(&mut serde_json::Deserializer::from_str(&text))
            .unwrap();
        assert_eq!(parsed, value);
        // The charged lower bound never exceeds the canonical length.
        let charged = 10_000 - budget.get();
        assert!(
            usize::try_from(charged).unwrap() <= grid_protocol::canonical_json(&value).len(),
            "{charged}"
        );
    }

    #[test]
    fn an_amplifying_input_is_refused_within_its_budget() {
        let limits = limits(10, 1024);
        let zeros = vec!["0"; 1_000_000].join(",");
        let body = format!(r#"{{"kernel":"echo","inputs":[[{zeros}]]}}"#);
        let error = read(&body, &limits, "echo").unwrap_err();
        assert!(
            matches!(&error, Error::TooLarge(m) if m.contains("inputs[0] is more than 1024")),
            "{error:?}"
        );
    }

    #[test]
    fn counts_and_sizes_name_the_input() {
        let small = limits(3, 16);
        let error = read(r#"{"inputs":[1,2,3,4,5]}"#, &small, "echo").unwrap_err();
        assert!(
            matches!(&error, Error::TooLarge(m) if m.ends_with("this one has 5")),
            "{error:?}"
        );
        assert!(read(r#"{"inputs":[1,2,3]}"#, &small, "echo").is_ok());
        let error = read(r#"{"inputs":[1,"0123456789abcdefgh"]}"#, &small, "echo").unwrap_err();
        assert!(
            matches!(&error, Error::TooLarge(m) if m.starts_with("inputs[1] is")),
            "{error:?}"
        );
        let error = read(
            r#"{"inputs":[{"start":0,"end":5},{"start":9,"end":1}]}"#,
            &limits(3, 1024),
            "primes",
        )
        .unwrap_err();
        assert!(
            matches!(&error, Error::Invalid { code: "invalid_input", message } if message.starts_with("inputs[1]: ")),
            "{error:?}"
        );
    }

    #[test]
    fn bad_json_is_400_and_a_bad_shape_422() {
        let limits = limits(3, 1024);
        assert!(matches!(
            read(r#"{"inputs":[1,"#, &limits, "echo"),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            read(r#"{"inputs":5}"#, &limits, "echo"),
            Err(Error::Invalid {
                code: "invalid_field",
                ..
            })
        ));
    }
}
