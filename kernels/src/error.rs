//! The error type shared by every kernel.

/// Why a kernel refused to run.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// The kernel name is not one of [`crate::KERNEL_NAMES`].
    #[error("unknown kernel `{0}`")]
    UnknownKernel(String),
    /// The input does not parse, or is outside the kernel's limits.
    /// The message starts with the kernel name, e.g.
    /// `primes: start (10) must be <= end (5)`.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl KernelError {
    /// Builds an [`KernelError::InvalidInput`] prefixed with the kernel name.
    pub(crate) fn invalid(kernel: &str, msg: impl std::fmt::Display) -> Self {
        KernelError::InvalidInput(format!("{kernel}: {msg}"))
    }
}

/// Deserializes a kernel input object from a borrowed JSON value (no
/// clone). Only JSON objects are accepted (serde would also take the
/// fields as an array).
pub(crate) fn parse<'a, T: serde::Deserialize<'a>>(
    kernel: &str,
    input: &'a serde_json::Value,
) -> Result<T, KernelError> {
    if !input.is_object() {
        let kind = match input {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "an object",
        };
        return Err(KernelError::invalid(
            kernel,
            format_args!("input must be a JSON object, got {kind}"),
        ));
    }
    T::deserialize(input).map_err(|e| KernelError::invalid(kernel, e))
}

/// Serializes a kernel output. Outputs are plain structs of integers,
/// strings, options and vectors, so this cannot fail.
pub(crate) fn to_json<T: serde::Serialize>(output: &T) -> serde_json::Value {
    serde_json::to_value(output).expect("kernel outputs always serialize to JSON")
}
