import Crypto
import DataStreamCore
import Glibc
import UV

/// The client side: sends files to a DataStream receiver over one TCP connection, in the native
/// protocol (several files, digests, resume) or the seed protocol (one connection per file, as
/// the seed's own client). Runs on a loop the caller owns and runs; the sender owns its stream,
/// its two file buffers and the descriptors it opens.
public final class Sender {
    /// Where to send and how: the receiver, the token, the protocol, the digest, the chunk size.
    public struct Options: Sendable {
        public var host: String
        public var port: Int
        public var token: String?
        public var seedProtocol = false
        public var digest: DigestAlgorithm = .xxh3_128
        /// Bytes per file read and socket write.
        public var chunkSize = 256 * 1024
        /// Gives the files their upload ids (default: the secret of the default state directory).
        public var identity: UploadIdentity?
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    /// What happened to one file.
    public struct Outcome: Sendable {
        public var path: String
        public var size: UInt64 = 0
        /// Bytes put on the wire for it (less than `size` after a resume).
        public var bytesSent: UInt64 = 0
        /// Where the server already was when it answered READY (0 for a fresh upload).
        public var resumedFrom: UInt64 = 0
        public var succeeded = false
        /// The name the server stored it under (native protocol only).
        public var storedName = ""
        public var digest = ""
        public var message = ""
    }

    public let loop: Loop
    public let options: Options
    private var identity: UploadIdentity { options.identity ?? .standard }
    private var stream: TCPStream?
    private var paths: [String] = []
    private var outcomes: [Outcome] = []
    private var index = 0
    private var completion: (([Outcome]) -> Void)?
    private var progress: ((UInt64) -> Void)?
    /// The native protocol's decisions (a fresh one per connection).
    private var client: NativeClientMachine
    private let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    private let chunks: [UnsafeMutableRawBufferPointer]
    private var freeChunks: [Int] = []
    private lazy var fs = FileSystem(loop: loop)
    private var phase: Phase = .idle
    /// Total bytes written to the socket for file data, for progress.
    public private(set) var totalSent: UInt64 = 0

    /// What the sender itself is doing: waiting on the server (native: what for is the
    /// machine's business), streaming a file's bytes, or waiting for a seed server to close.
    private enum Phase { case idle, awaitingServer, streaming, seedAwaitingClose, done }

    // The file being sent.
    private var fd: FileDescriptor?
    private var fileSize: UInt64 = 0
    private var readOffset: UInt64 = 0
    private var sendFrom: UInt64 = 0
    private var writesInFlight = 0
    private var readsInFlight = 0
    private var digester: Digester?

    public init(loop: Loop, options: Options) {
        self.loop = loop
        self.options = options
        client = NativeClientMachine(token: options.token)
        chunks = (0..<2).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: options.chunkSize, alignment: 16) }
        freeChunks = [0, 1]
    }

    deinit {
        readBuffer.deallocate()
        for c in chunks { c.deallocate() }
    }

    /// Sends `paths` in order; `completion` gets one outcome per path. `progress` gets the total
    /// file bytes written to the socket so far.
    public func send(_ paths: [String], progress: ((UInt64) -> Void)? = nil, completion: @escaping ([Outcome]) -> Void) {
        ignoreBrokenPipes()
        self.paths = paths
        self.outcomes = paths.map { Outcome(path: $0) }
        self.completion = completion
        self.progress = progress
        index = 0
        if options.seedProtocol { nextSeedFile() } else { connect { [self] in sendHello() } }
    }

    // MARK: - Connection

    private func connect(_ then: @escaping () -> Void) {
        do {
            let address = try SocketAddress.resolve(options.host, port: options.port, on: loop)
            try TCPStream.connect(loop: loop, to: address) { [self] result in
                switch result {
                case .success(let s):
                    stream = s
                    client = NativeClientMachine(token: options.token)
                    do { try s.startReading(SenderReader(self)) } catch { failAll("\(error)"); return }
                    then()
                case .failure(let e):
                    failAll(e.description)
                }
            }
        } catch {
            failAll("\(error)")
        }
    }

    private func write(_ bytes: [UInt8]) {
        do { try stream?.write(bytes) } catch { failAll("\(error)") }
    }

    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? { readBuffer }

    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        switch event {
        case .data(let count):
            var offset = 0
            while offset < count, phase != .done {
                let (taken, action) = client.bytesReceived(UnsafeRawBufferPointer(rebasing: readBuffer[offset..<count]))
                offset += taken
                perform(action)
            }
        case .endOfStream, .failed, .noBuffer:
            if phase == .seedAwaitingClose {
                if case .endOfStream = event {
                    outcomes[index].succeeded = true
                    outcomes[index].message = "sent; the server closed the connection"
                } else {
                    outcomes[index].message = "connection failed: \(event)"
                }
                closeStream()
                index += 1
                nextSeedFile()
            } else if phase != .done {
                failAll(event == .endOfStream ? "the server closed the connection" : "connection failed: \(event)")
            }
        }
    }

    private func perform(_ action: NativeClientMachine.Action) {
        switch action {
        case .none:
            break
        case .send(let bytes):
            write(bytes)
        case .announceNextFile:
            nextNativeFile()
        case .stream(let offset):
            outcomes[index].resumedFrom = offset
            sendFrom = offset
            phase = .streaming
            pumpFile()
        case .finished(let r):
            outcomes[index].succeeded = r.status == .stored
            outcomes[index].storedName = r.storedName
            outcomes[index].digest = r.digest.hexString
            outcomes[index].message = r.message
            closeFile()
            index += 1
            nextNativeFile()
        case .fail(let failure):
            failAll(failure.description)
        }
    }

    // MARK: - Native files

    private func sendHello() {
        phase = .awaitingServer
        perform(client.connected())
    }

    private func nextNativeFile() {
        openNextFile(finished: { [self] in
            phase = .done
            write(Wire.bye())
            finish()
        }) { [self] path, size, id in
            digester = Digester(options.digest)
            phase = .awaitingServer
            let name = String(path.split(separator: "/").last ?? Substring(path))
            perform(client.announce(FileHeader(uploadID: id, size: size, digest: options.digest, name: name)))
        }
    }

    /// Opens the next readable file (recording why others cannot be read) and calls `start`
    /// with it; after the last file, calls `finished`.
    private func openNextFile(finished: () -> Void, start: @escaping (String, UInt64, UploadID) -> Void) {
        while index < paths.count {
            let path = paths[index]
            if let (size, id) = identity.identity(of: path) {
                outcomes[index].size = size
                openFile(path, size: size) { start(path, size, id) }
                return
            }
            outcomes[index].message = "cannot read \(path): \(errno == 0 ? "not a regular file" : String(cString: strerror(errno)))"
            index += 1
        }
        finished()
    }

    private func openFile(_ path: String, size: UInt64, then: @escaping () -> Void) {
        fileSize = size
        readOffset = 0
        sendFrom = 0
        do {
            try fs.open(path, flags: [.readOnly]) { [self] r in
                switch r {
                case .success(let f):
                    fd = f
                    then()
                case .failure(let e):
                    outcomes[index].message = e.description
                    index += 1
                    options.seedProtocol ? nextSeedFile() : nextNativeFile()
                }
            }
        } catch {
            outcomes[index].message = "\(error)"
            index += 1
            options.seedProtocol ? nextSeedFile() : nextNativeFile()
        }
    }

    /// Keeps up to two chunks moving: read from the file (hashing every byte), then written to
    /// the socket if past the resume point.
    private func pumpFile() {
        while readOffset < fileSize, let chunk = freeChunks.popLast(), let fd {
            let n = Int(min(UInt64(chunks[chunk].count), fileSize - readOffset))
            let offset = readOffset
            readOffset += UInt64(n)
            readsInFlight += 1
            do {
                try fs.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: chunks[chunk][0..<n]), offset: Int64(offset)) { [self] r in
                    readsInFlight -= 1
                    guard case .success(let got) = r, got == n else {
                        failAll("read of \(paths[index]) failed or the file shrank")
                        return
                    }
                    chunkRead(chunk, offset: offset, count: n)
                }
            } catch {
                failAll("\(error)")
                return
            }
        }
        if readOffset >= fileSize && writesInFlight == 0 && readsInFlight == 0 && phase == .streaming {
            fileStreamed()
        }
    }

    private var pendingChunks: [(chunk: Int, offset: UInt64, count: Int)] = []
    private var nextHashOffset: UInt64 = 0

    private func chunkRead(_ chunk: Int, offset: UInt64, count: Int) {
        // Reads can complete out of order: hash and send strictly in file order.
        pendingChunks.append((chunk, offset, count))
        pendingChunks.sort { $0.offset < $1.offset }
        while let first = pendingChunks.first, first.offset == nextHashOffset {
            pendingChunks.removeFirst()
            nextHashOffset += UInt64(first.count)
            let bytes = UnsafeRawBufferPointer(rebasing: chunks[first.chunk][0..<first.count])
            if phase != .seedAwaitingClose { digester?.update(bytes) }
            let skip = first.offset < sendFrom ? Int(min(UInt64(first.count), sendFrom - first.offset)) : 0
            if skip == first.count {
                freeChunks.append(first.chunk)
                continue
            }
            writesInFlight += 1
            let toSend = UnsafeRawBufferPointer(rebasing: bytes[skip...])
            do {
                try stream?.write(unsafeBytes: toSend) { [self] e in
                    writesInFlight -= 1
                    freeChunks.append(first.chunk)
                    if let e { failAll(e.description); return }
                    totalSent += UInt64(toSend.count)
                    outcomes[index].bytesSent += UInt64(toSend.count)
                    progress?(totalSent)
                    pumpFile()
                }
            } catch {
                writesInFlight -= 1
                failAll("\(error)")
                return
            }
        }
        pumpFile()
    }

    private func fileStreamed() {
        if options.seedProtocol {
            phase = .seedAwaitingClose
            try? stream?.shutdown()
            return
        }
        phase = .awaitingServer
        perform(client.streamed(digest: digester!.finish()))
    }

    private func closeFile() {
        if let fd { try? fs.close(fd) }
        fd = nil
        nextHashOffset = 0
        pendingChunks.removeAll()
    }

    // MARK: - Seed files

    private func nextSeedFile() {
        closeFile()
        openNextFile(finished: { [self] in
            phase = .done
            finish()
        }) { [self] _, size, _ in
            digester = nil
            connect { [self] in
                phase = .streaming
                write(Array(String(size).utf8))
                pumpFile()
            }
        }
    }

    // MARK: - End

    private func closeStream() {
        stream?.close()
        stream = nil
    }

    private func failAll(_ message: String) {
        guard phase != .done else { return }
        for i in index..<outcomes.count where outcomes[i].message.isEmpty {
            outcomes[i].message = message
        }
        phase = .done
        finish()
    }

    private func finish() {
        closeFile()
        closeStream()
        let c = completion
        completion = nil
        c?(outcomes)
    }
}

/// Hands the stream's reads to its sender, so that the callbacks stay out of the sender's public
/// API. Held by the stream while it reads, and holding the sender
/// (as the sender itself was held before): a send in progress keeps its sender alive.
private final class SenderReader: TCPStreamReader {
    let sender: Sender
    init(_ sender: Sender) { self.sender = sender }
    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? {
        sender.readBuffer(for: stream, suggestedSize: suggestedSize)
    }
    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        sender.stream(stream, didRead: event, buffer: buffer)
    }
}
