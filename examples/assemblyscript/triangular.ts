// A raw-ABI task module in AssemblyScript (docs/task-abi.md): input a JSON integer n from 0 to
// 1000000000, output {"n":n,"square":<is it a perfect square?>,"triangular":n(n+1)/2}.
//
// Build (npm install in this directory first):
//   node_modules/.bin/asc triangular.ts -O3 --runtime stub --use abort= -o triangular-as.wasm
// `--runtime stub` is a bump allocator without a collector (each chunk gets a fresh instance
// anyway) and `--use abort=` drops the `env.abort` import, so the module imports nothing.

export function grid_alloc(len: i32): usize {
  return heap.alloc(<usize>len);
}

export function grid_run(ptr: usize, len: i32): i64 {
  let n: u64 = 0;
  let ok = len > 0 && len <= 10;
  for (let i = 0; ok && i < len; i++) {
    const c = load<u8>(ptr + <usize>i);
    if (c < 48 || c > 57) ok = false;
    else n = n * 10 + <u64>(c - 48);
  }
  let text: string;
  if (!ok || n > 1_000_000_000) {
    text = '{"error":"input must be an integer from 0 to 1000000000"}';
  } else {
    const t = (n * (n + 1)) / 2;
    const root = <u64>Math.sqrt(<f64>t);
    const square = root * root == t || (root + 1) * (root + 1) == t;
    text = '{"n":' + n.toString() + ',"square":' + (square ? 'true' : 'false') +
      ',"triangular":' + t.toString() + '}';
  }
  const bytes = String.UTF8.encode(text);
  return (<i64>changetype<usize>(bytes) << 32) | <i64>bytes.byteLength;
}
