// A peer for comparisons: Node.js `net` + `fs` receiving the seed framing (greedy digits, then
// the bytes), one file per upload, closing the connection once the declared size is stored.
// It keeps its side open after the client's end of stream (allowHalfOpen), so the client's
// "done" means stored, as for the other peers, and listens with a backlog as large as theirs.
// Usage: node node-receiver.js PORT DIR
const net = require('net'), fs = require('fs'), path = require('path');
const [port, dir] = [Number(process.argv[2]), process.argv[3]];
fs.mkdirSync(dir, { recursive: true });
let counter = 0;
net.createServer({ allowHalfOpen: true }, (sock) => {
  let digits = '', size = -1, received = 0, out = null;
  const id = ++counter;
  sock.on('data', (chunk) => {
    let i = 0;
    if (size < 0) {
      while (i < chunk.length && chunk[i] >= 48 && chunk[i] <= 57) digits += String.fromCharCode(chunk[i++]);
      if (i === chunk.length) return;
      size = Number(digits);
      out = fs.createWriteStream(path.join(dir, `upload-${id}.bin`));
    }
    const body = chunk.subarray(i);
    received += body.length;
    if (!out.write(body)) { sock.pause(); out.once('drain', () => sock.resume()); }
    if (received >= size) out.end(() => sock.end());
  });
  sock.on('end', () => { if (size < 0 || received < size) { if (out) out.destroy(); sock.destroy(); } });
  sock.on('error', () => {});
}).listen({ port, host: '127.0.0.1', backlog: 65535 }, () => console.log(`listening tcp 127.0.0.1:${port}`));
