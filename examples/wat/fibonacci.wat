;; fibonacci.wat: a grid task module written by hand in WebAssembly text, to show that the task
;; ABI (docs/task-abi.md) needs no particular language or SDK.
;;
;; Input:  a JSON integer n, 0 <= n < 2^64, e.g. `90` (the worker sends canonical JSON, so an
;;         integer arrives as bare decimal digits).
;; Output: fib(n) mod 2^64 as a JSON integer, e.g. `2880067194370816120`, with fib(0) = 0 and
;;         fib(1) = 1. Any other input is answered with
;;         {"error":"input must be a JSON integer from 0 to 18446744073709551615"}
;;         (an ordinary output, like the Rust SDK's error outputs).
;;
;; fib(n) is computed by "fast doubling" in 64 steps whatever n is: with F(k) and F(k+1),
;;   F(2k)   = F(k) * (2 F(k+1) - F(k))
;;   F(2k+1) = F(k)^2 + F(k+1)^2
;; These identities hold in any commutative ring, so wrapping i64 arithmetic (the integers
;; mod 2^64) gives fib(n) mod 2^64 exactly, the same on every engine.
;;
;; Build: `cargo xtask modules` assembles it with the `wat` crate into
;; <target>/task-modules/fibonacci.wasm (`wat2wasm fibonacci.wat` from wabt does the same).
;;
;; Memory layout (one 64 KiB page at start, grown by grid_alloc for large inputs):
;;   [64, 96)    the output digits, written backwards from 96 (at most 20 of them)
;;   [128, 199)  the error output, a data segment
;;   [1024, ...) the input buffer handed out by grid_alloc
(module
  ;; No imports at all: the ABI forbids them.

  ;; The module's one linear memory, exported as `memory` so the worker can write the input
  ;; and read the output. No declared maximum: the job's memory cap applies.
  (memory (export "memory") 1)

  (global $INPUT i32 (i32.const 1024))
  (global $DIGITS_END i32 (i32.const 96))
  (global $ERROR i32 (i32.const 128))
  (global $ERROR_LEN i32 (i32.const 71))
  (data (i32.const 128)
    "{\"error\":\"input must be a JSON integer from 0 to 18446744073709551615\"}")

  ;; grid_run's return value: (ptr << 32) | len, both unsigned.
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; grid_alloc(len): room for the input. There is only ever one input, so the buffer is
  ;; always at $INPUT; the memory grows when the input does not fit. A grow refused by the
  ;; job's memory cap ends the chunk with a trap (the worker reports it).
  (func (export "grid_alloc") (param $len i32) (result i32)
    (local $needed i64)
    (local $have i64)
    ;; Computed in i64 so that a huge `len` (read as unsigned) cannot wrap around.
    (local.set $needed
      (i64.add (i64.extend_i32_u (global.get $INPUT)) (i64.extend_i32_u (local.get $len))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $needed) (local.get $have))
      (then
        ;; Grow by the missing bytes rounded up to whole 64 KiB pages.
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u
                    (i64.add (i64.sub (local.get $needed) (local.get $have)) (i64.const 65535))
                    (i64.const 16))))
              (i32.const -1))
          (then unreachable))))
    (global.get $INPUT))

  ;; fib(n) mod 2^64 by fast doubling, from the top bit of n down.
  (func $fib (param $n i64) (result i64)
    (local $a i64) ;; F(k)
    (local $b i64) ;; F(k+1)
    (local $c i64) ;; F(2k)
    (local $d i64) ;; F(2k+1)
    (local $bit i64)
    ;; k = 0: (F(0), F(1)) = (0, 1). Leading zero bits of n keep it so.
    (local.set $a (i64.const 0))
    (local.set $b (i64.const 1))
    (local.set $bit (i64.const 63))
    (loop $bits
      (local.set $c
        (i64.mul (local.get $a)
          (i64.sub (i64.shl (local.get $b) (i64.const 1)) (local.get $a))))
      (local.set $d
        (i64.add (i64.mul (local.get $a) (local.get $a))
                 (i64.mul (local.get $b) (local.get $b))))
      ;; k becomes 2k + (this bit of n).
      (if (i64.eqz (i64.and (i64.shr_u (local.get $n) (local.get $bit)) (i64.const 1)))
        (then
          (local.set $a (local.get $c))
          (local.set $b (local.get $d)))
        (else
          (local.set $a (local.get $d))
          (local.set $b (i64.add (local.get $c) (local.get $d)))))
      (local.set $bit (i64.sub (local.get $bit) (i64.const 1)))
      (br_if $bits (i64.ge_s (local.get $bit) (i64.const 0))))
    (local.get $a))

  ;; Write `value` in decimal just below $DIGITS_END; returns the packed output.
  (func $write_decimal (param $value i64) (result i64)
    (local $p i32)
    (local.set $p (global.get $DIGITS_END))
    ;; do { emit the last digit } while value != 0: so 0 is written as "0".
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $value) (i64.const 10)))))
      (local.set $value (i64.div_u (local.get $value) (i64.const 10)))
      (br_if $digits (i64.ne (local.get $value) (i64.const 0))))
    (call $pack (local.get $p) (i32.sub (global.get $DIGITS_END) (local.get $p))))

  ;; grid_run(ptr, len): parse the digits at ptr, answer fib(n) or the error output.
  (func (export "grid_run") (param $ptr i32) (param $len i32) (result i64)
    (local $n i64)
    (local $i i32)
    (local $digit i64)
    (local $times_ten i64)
    (block $invalid
      ;; JSON has no empty number, and no leading zeros ("0" alone is fine).
      (br_if $invalid (i32.eqz (local.get $len)))
      (br_if $invalid
        (i32.and (i32.gt_u (local.get $len) (i32.const 1))
                 (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 48))))
      (loop $chars
        ;; digit = byte - '0', as unsigned: anything but '0'..'9' is >= 10.
        (local.set $digit
          (i64.extend_i32_u
            (i32.sub (i32.load8_u (i32.add (local.get $ptr) (local.get $i))) (i32.const 48))))
        (br_if $invalid (i64.ge_u (local.get $digit) (i64.const 10)))
        ;; n = n * 10 + digit, refusing anything above 2^64 - 1:
        ;; n * 10 overflows exactly when n > floor((2^64 - 1) / 10) ...
        (br_if $invalid (i64.gt_u (local.get $n) (i64.const 1844674407370955161)))
        (local.set $times_ten (i64.mul (local.get $n) (i64.const 10)))
        (local.set $n (i64.add (local.get $times_ten) (local.get $digit)))
        ;; ... and adding the digit overflows exactly when the sum wraps below n * 10.
        (br_if $invalid (i64.lt_u (local.get $n) (local.get $times_ten)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $chars (i32.lt_u (local.get $i) (local.get $len))))
      (return (call $write_decimal (call $fib (local.get $n)))))
    (call $pack (global.get $ERROR) (global.get $ERROR_LEN)))
)
