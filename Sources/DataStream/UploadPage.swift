import Crypto
import Foundation  // base64 only

/// The browser's upload page at `GET /`, served from the binary: no third-party code, and a
/// Content-Security-Policy that lets only its own script and style run. Uploads go over the
/// WebSocket at `/ws` (docs/PROTOCOL.md §8), one file at a time, each resumable: the page keeps
/// each upload's id in localStorage under the file's name, size and lastModified, so a dropped
/// connection, a restarted server or a reloaded page goes on from the bytes the server holds.
enum UploadPage {
    static let style = """
    :root{color-scheme:light dark;--accent:#2563eb;--ok:#15803d;--bad:#b91c1c}
    *{box-sizing:border-box}
    body{font:16px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:1rem;max-width:46rem;margin-inline:auto}
    h1{font-size:1.4rem;margin:.2rem 0 1rem}
    #drop{display:block;border:2px dashed #888;border-radius:.8rem;padding:1.4rem;text-align:center;cursor:pointer}
    #drop.over{border-color:var(--accent);background:rgba(37,99,235,.08)}
    #drop input{display:block;margin:.8rem auto 0;max-width:100%}
    #auth{display:none;margin:1rem 0;gap:.5rem;flex-wrap:wrap}
    #auth.shown{display:flex}
    #auth input{flex:1 1 12rem;font:inherit;padding:.5rem}
    button{font:inherit;padding:.5rem 1rem;border-radius:.4rem;border:1px solid #888;background:var(--accent);color:#fff}
    #summary{margin:1rem 0 .4rem;font-weight:600}
    #state{font-size:.9rem;opacity:.8}
    ul{list-style:none;padding:0;margin:0}
    li{padding:.6rem 0;border-bottom:1px solid rgba(128,128,128,.3)}
    .name{font-weight:600;word-break:break-all}
    progress{width:100%;height:1rem;margin:.3rem 0}
    .meta{font-size:.85rem;opacity:.85;display:flex;justify-content:space-between;gap:.5rem;flex-wrap:wrap}
    li[data-state=stored] .status{color:var(--ok)}
    li[data-state=failed] .status{color:var(--bad)}
    """

    static let script = """
    'use strict';
    const CHUNK = 1 << 20, HIGH_WATER = 8 << 20;
    const $ = (id) => document.getElementById(id);
    const queue = [];
    let ws = null, hello = null, token = null, authError = null, current = null, retry = 0, totalBytes = 0, doneBytes = 0;

    function fmtBytes(n) {
      const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0;
      while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
      return (i ? n.toFixed(1) : Math.round(n)) + ' ' + u[i];
    }
    function fmtTime(s) {
      if (!isFinite(s)) return '…';
      s = Math.round(s); return s >= 60 ? Math.floor(s / 60) + ' min ' + (s % 60) + ' s' : s + ' s';
    }
    function key(f) { return 'datastream:' + JSON.stringify([f.name, f.size, f.lastModified]); }
    function setState(text) { $('state').textContent = text; }

    function addFiles(files) {
      for (const file of files) {
        const li = document.createElement('li');
        li.dataset.state = 'waiting'; li.dataset.name = file.name;
        li.innerHTML = '<div class="name"></div><progress max="1" value="0"></progress>' +
          '<div class="meta"><span class="status">waiting</span><span class="rate"></span></div>';
        li.querySelector('.name').textContent = file.name + ' (' + fmtBytes(file.size) + ')';
        $('list').appendChild(li);
        const item = { file, li, sent: 0, offset: 0, started: 0, startOffset: 0 };
        queue.push(item); totalBytes += file.size;
      }
      updateTotal(); next();
    }

    function updateTotal() {
      const inFlight = current ? current.sent : 0;
      const done = doneBytes + inFlight;
      $('summary').textContent = queue.length || current
        ? 'Uploading: ' + fmtBytes(done) + ' of ' + fmtBytes(totalBytes)
        : (totalBytes ? 'All ' + fmtBytes(totalBytes) + ' stored' : 'Pick or drop files');
      $('total').max = totalBytes || 1; $('total').value = done;
    }

    function show(item, status, state) {
      if (state) item.li.dataset.state = state;
      item.li.querySelector('.status').textContent = status;
      const p = item.li.querySelector('progress');
      p.max = item.file.size || 1; p.value = item.file.size ? item.sent : (state === 'stored' ? 1 : 0);
      if (item.started && state === 'sending') {
        const secs = (performance.now() - item.started) / 1000;
        const rate = (item.sent - item.startOffset) / Math.max(secs, 0.001);
        item.li.querySelector('.rate').textContent = fmtBytes(rate) + '/s · ' + fmtTime((item.file.size - item.sent) / rate) + ' left';
      } else if (state !== 'sending') {
        item.li.querySelector('.rate').textContent = '';
      }
      updateTotal();
    }

    function connect() {
      if (ws) return;
      const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
      setState('Connecting…');
      ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      ws.onmessage = (e) => receive(JSON.parse(e.data));
      ws.onclose = (e) => {
        ws = null; hello = null;
        if (current) { show(current, 'connection lost, retrying…', 'retrying'); queue.unshift(current); current = null; }
        if (e.code === 1008 && e.reason.startsWith('authentication')) { token = null; }
        if (queue.length) {
          const delay = Math.min(10000, 250 * 2 ** retry++);
          setState('Disconnected; retrying in ' + fmtTime(delay / 1000));
          setTimeout(connect, delay);
        } else { setState('Idle'); }
      };
    }

    async function receive(m) {
      if (m.type === 'hello') {
        hello = m; retry = 0;
        if (m.auth === 'hmac-sha256') {
          if (!token) { $('auth').classList.add('shown'); setState(authError || 'This server needs a token'); return; }
          return authenticate();
        }
        setState('Connected'); next();
      } else if (m.type === 'welcome') {
        authError = null; $('auth').classList.remove('shown'); setState('Connected'); next();
      } else if (m.type === 'ready') {
        const item = current;
        localStorage.setItem(key(item.file), m.id);
        item.sent = item.offset = item.startOffset = m.offset;
        item.li.dataset.offset = m.offset;
        item.started = performance.now();
        show(item, m.offset ? 'resumed at ' + fmtBytes(m.offset) : 'sending', 'sending');
        send(item);
      } else if (m.type === 'stored') {
        const item = current; current = null;
        localStorage.removeItem(key(item.file));
        doneBytes += item.file.size; item.sent = item.file.size;
        item.li.dataset.stored = m.name;
        show(item, 'stored as ' + m.name, 'stored');
        next();
      } else if (m.type === 'error') {
        if (m.code === 'authentication_failed' || m.code === 'authentication_required') {
          token = null; authError = 'Wrong token: ' + m.message;
          $('auth').classList.add('shown'); setState(authError); return;
        }
        const item = current;
        if (item) {
          current = null;
          if (m.code === 'resume_mismatch') localStorage.removeItem(key(item.file));
          doneBytes += item.file.size;
          show(item, 'not stored: ' + m.message, 'failed');
        } else { setState('Error: ' + m.message); }
        next();
      }
    }

    async function authenticate() {
      const enc = new TextEncoder();
      const k = await crypto.subtle.importKey('raw', enc.encode(token), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
      const nonce = hello.nonce.match(/../g).map((h) => parseInt(h, 16));
      const message = new Uint8Array([...enc.encode('datastream-v1-auth'), ...nonce]);
      const mac = new Uint8Array(await crypto.subtle.sign('HMAC', k, message));
      ws.send(JSON.stringify({ type: 'auth', mac: [...mac].map((b) => b.toString(16).padStart(2, '0')).join('') }));
    }

    function next() {
      if (current || !queue.length) { updateTotal(); return; }
      if (!ws) { connect(); return; }
      if (!hello || ws.readyState !== WebSocket.OPEN || $('auth').classList.contains('shown')) return;
      current = queue.shift();
      const f = current.file, begin = { type: 'begin', name: f.name, size: f.size };
      const resume = localStorage.getItem(key(f));
      if (resume) begin.resume = resume;
      show(current, resume ? 'resuming…' : 'starting…', 'starting');
      ws.send(JSON.stringify(begin));
    }

    // Sends the file from item.offset, never letting more than HIGH_WATER wait in the socket.
    async function send(item) {
      const socket = ws, live = () => socket === ws && current === item;
      const pause = (ms) => new Promise((r) => setTimeout(r, ms));
      while (live() && item.offset < item.file.size) {
        if (socket.bufferedAmount > HIGH_WATER) { await pause(10); }
        else {
          const end = Math.min(item.offset + CHUNK, item.file.size);
          const bytes = await item.file.slice(item.offset, end).arrayBuffer();
          if (!live()) return;
          socket.send(bytes); item.offset = end;
        }
        if (!live()) return;
        item.sent = Math.max(item.startOffset, item.offset - socket.bufferedAmount);
        show(item, 'sending', 'sending');
      }
      while (live() && socket.bufferedAmount > 0) {
        await pause(20);
        if (!live()) return;
        item.sent = item.offset - socket.bufferedAmount; show(item, 'sending', 'sending');
      }
      if (live()) { item.sent = item.file.size; show(item, 'storing…', 'storing'); }
    }

    $('files').addEventListener('change', (e) => { addFiles(e.target.files); e.target.value = ''; });
    const drop = $('drop');
    drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); addFiles(e.dataTransfer.files); });
    $('auth').addEventListener('submit', (e) => {
      e.preventDefault(); token = $('token').value; $('token').value = '';
      $('auth').classList.remove('shown');
      if (ws && hello) authenticate(); else connect();
    });
    connect(); updateTotal();
    """

    static let body = """
    <h1>DataStream upload</h1>
    <label id="drop">Drop files here, or pick them:<input id="files" type="file" multiple></label>
    <form id="auth" autocomplete="off"><input id="token" type="password" placeholder="Token" aria-label="Token"><button>Unlock</button></form>
    <div id="summary">Pick or drop files</div>
    <progress id="total" max="1" value="0"></progress>
    <div id="state">Connecting…</div>
    <ul id="list"></ul>
    """

    static let html: [UInt8] = Array("""
    <!doctype html>
    <html lang="en"><head><meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>DataStream upload</title>
    <style>\(style)</style></head>
    <body>\(body)
    <script>\(script)</script>
    </body></html>
    """.utf8)

    /// Only this page's own script and style run; it connects only to its own server.
    static let contentSecurityPolicy: String = {
        func hash(_ text: String) -> String { "'sha256-\(Data(SHA256.hash(data: Array(text.utf8))).base64EncodedString())'" }
        return "default-src 'none'; script-src \(hash(script)); style-src \(hash(style)); connect-src 'self'; form-action 'none'; base-uri 'none'"
    }()
}
