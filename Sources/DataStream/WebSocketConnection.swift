import DataStreamCore
import Glibc
import Logging
import UV

/// The driver of one WebSocket connection at `/ws` (the browser page's uploads): it gives what
/// libuv reads to the frame codec (`WebSocketCodec`), feeds the messages to the connection's
/// `WebSocketUploadMachine`, and carries out the actions it returns: opening an upload's partial
/// (the tus store: `Store+Tus`), writing its bytes, storing it, answering.
///
/// Made by an `HTTPConnection` once it has written `101 Switching Protocols`; it takes that
/// connection's stream and its place in the server's table, and is held there until the
/// stream's close callback. It owns the stream, the codec, the input held while reading is
/// paused, and the upload's partial and `UploadSink`.
///
/// Binary payload is unmasked in place in the receive slab it was read into and written to the
/// file from there, as a PUT body is: an upload needs no memory beyond the server's slabs.
final class WebSocketConnection: TakenOverConnection, TCPStreamReader, UploadSinkOwner {
    private let codec: WebSocketCodec
    private var machine: WebSocketUploadMachine
    private var flowPaused = false
    private var peerEnded = false
    private var flow: WaterMarks
    /// Input the codec has not taken (reading paused for the file's sake).
    private var held: (slab: Slab, start: Int, count: Int)?
    /// The slab being fed and where its input starts (binary events are ranges of it).
    private var feeding: (slab: Slab, start: Int)?

    // The upload in progress.
    private var sink: UploadSink?
    private var partial: Store.TusPartial?
    private var reserved: UInt64 = 0
    /// Its bytes are all in and it is being flushed and linked (`commitUpload`).
    private var storing = false
    private var uploadStarted: UInt64 = 0

    init(id: UInt64, server: Server, stream: TCPStream, acceptedPeer: SocketAddress?) {
        self.codec = WebSocketCodec(maxTextBytes: 64 * 1024)
        self.machine = WebSocketUploadMachine(configuration: server.webSocketConfiguration, now: monotonicNanoseconds())
        self.flow = WaterMarks(low: server.configuration.connectionBufferLow, high: server.configuration.connectionBufferHigh)
        super.init(id: id, server: server, stream: stream, acceptedPeer: acceptedPeer, protocolName: "websocket")
        server.statistics.webSocketConnections += 1
    }

    /// Takes over with the input read after the handshake (`count` bytes of `slab` from `start`).
    func start(_ slab: Slab, start: Int, count: Int) {
        perform(machine.start(nonce: Authentication.nonce()))
        if count > 0 { process(slab, start: start, count: count) }
        updateReading()
    }

    // MARK: - Reading

    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        switch event {
        case .data(let count):
            guard count > 0 else { return }
            let (slab, start) = pool.received(count)
            server.statistics.bytesReceived += UInt64(count)
            process(slab, start: start, count: count)
            updateReading()
        case .endOfStream, .failed:
            if case .failed(let error) = event { log(.debug, "connection failed: \(error)") }
            peerEnded = true
            perform(machine.connectionEnded())
            closeNow()
        case .noBuffer:
            break
        }
    }

    func sinkReleased(_ count: Int) {
        if flow.removed(count) == .resume {
            flowPaused = false
            if let h = held {
                held = nil
                process(h.slab, start: h.start, count: h.count)
                pool.release(h.slab)
            }
            updateReading()
        }
    }

    func sinkFailed(_ error: UVOperationError) {
        log(.error, "upload failed: \(error)")
        perform(machine.uploadFailed(.storage(error)))
    }

    /// Gives input to the codec until it is used up or the file needs reading paused; what is
    /// left is held. Then writes what the codec has to send, and closes once it is finished.
    private func process(_ slab: Slab, start: Int, count: Int) {
        guard !closing else { return }
        feeding = (slab, start)
        let input = UnsafeMutableRawBufferPointer(rebasing: slab.memory[start..<(start + count)])
        let taken = codec.feed(input) { event in handle(event) }
        feeding = nil
        if taken < count, !closing, codec.isReading {
            pool.retain(slab)
            held = (slab, start + taken, count - taken)
        }
        flushOutput()
    }

    /// One event of the codec; false stops the feed after it (the file needs reading paused).
    private func handle(_ event: WebSocketCodec.Event) -> Bool {
        guard !closing else { return false }
        switch event {
        case .text(let bytes):
            perform(machine.textReceived(bytes, now: monotonicNanoseconds()))
        case .binary(let range):
            let action = machine.binaryReceived(range.count, now: monotonicNanoseconds())
            if case .write(let n, let last) = action {
                queue(range, count: n)
                if last { commitUpload() }
            } else {
                perform(action)
            }
        case .closeReceived(let code):
            log(.debug, "close frame received", metadata: ["code": "\(code)"])
            perform(machine.connectionEnded())
        }
        return !flowPaused
    }

    /// Queues unmasked payload (`range` of the input being fed) for the upload's file, from
    /// the receive slab it is in.
    private func queue(_ range: Range<Int>, count: Int) {
        guard let sink, let f = feeding else { return }
        server.metrics.received(count, .webSocket)
        if flow.added(count) == .pause { flowPaused = true }
        sink.append(f.slab, start: f.start + range.lowerBound, count: count)
    }

    override func updateReading() {
        guard !closing, stream.isOpen else { return }
        let shouldRead = !peerEnded && !waitingForBuffer && !flowPaused && held == nil
        if shouldRead && !stream.isReading {
            do throws(UVOperationError) { try stream.startReading(self) } catch { closeNow() }
        } else if !shouldRead && stream.isReading {
            stream.stopReading()
        }
    }

    /// Writes what the codec has queued; once both sides have closed, closes the stream.
    private func flushOutput() {
        guard !closing, feeding == nil else { return }  // `process` flushes after the feed
        let out = codec.takeOutput()
        if !out.isEmpty {
            do throws(UVOperationError) { try stream.write(out) } catch {
                log(.debug, "write failed: \(error)")
                closeNow()
                return
            }
        }
        if codec.isFinished {
            if let refusal = codec.refusal, !machine.isClosed {
                // The codec refused a frame (1002, 1007, 1009): the connection ends here.
                server.statistics.webSocketProtocolErrors += 1
                server.noisy(.webSocketClosed, .info, "websocket closed: \(refusal)", metadata: ["peer": "\(peerText)"])
                perform(machine.connectionEnded())
            }
            closeNow()
        }
    }

    // MARK: - Actions

    private func perform(_ action: WebSocketUploadMachine.Action) {
        guard !closing else { return }
        switch action {
        case .none:
            break
        case .send(let message):
            codec.sendText(message)
            flushOutput()
        case .lookUpUpload(let uploadID):
            store.lookUpTus(uploadID) { [self] r in
                switch r {
                case .success(let found?): perform(machine.lookedUp(name: found.header.name, size: found.header.size, held: found.held))
                case .success(nil): perform(machine.lookedUp(name: nil, size: 0, held: 0))
                case .failure(let e): perform(machine.uploadRefused(e))
                }
            }
        case .createUpload(let name, let size):
            store.createTus(name: name, length: size, owner: peer?.hostIdentityBytes ?? []) { [self] r in
                switch r {
                case .success(let uploadID):
                    log(.info, "websocket upload created", metadata: ["upload": "\(uploadID)", "name": "\(name)", "size": "\(size)"])
                    perform(machine.uploadCreated(uploadID))
                case .failure(let e):
                    perform(machine.uploadRefused(e))
                }
            }
        case .openUpload(let uploadID, let offset):
            openUpload(uploadID, offset: offset)
        case .write:
            break  // taken in `handle`, with the bytes it concerns
        case .sendAndCommit(let message):
            codec.sendText(message)
            flushOutput()
            commitUpload()
        case .endUpload:
            endUpload()
        case .close(let code, let reason, let message):
            if code == 1008 { server.noisy(.webSocketClosed, .info, "websocket closed: \(reason)", metadata: ["peer": "\(peerText)"]) }
            if let message { codec.sendText(message) }
            codec.close(code: code, reason: reason)
            endUpload()  // what still comes is read for the client's close frame, and dropped
            flushOutput()
        case .hangUp:
            closeNow()
        }
    }

    private func openUpload(_ uploadID: UploadID, offset: UInt64) {
        store.openTus(uploadID, offset: offset) { [self] r in
            switch r {
            case .failure(.notFound):
                perform(machine.uploadRefused(.resumeMismatch(detail: "the upload is gone")))
            case .failure(.busy):
                perform(machine.uploadRefused(.uploadBusy))
            case .failure(.offsetMismatch(let held)):
                perform(machine.uploadRefused(.resumeMismatch(detail: "the server holds \(held) bytes")))
            case .failure(.failed(let e)):
                perform(machine.uploadRefused(e))
            case .success(let opened):
                let header = opened.upload.header
                guard !closing else {
                    store.close(opened.fd, opened.path) { [store] in store.keepTus(uploadID, bytes: opened.upload.held) }
                    return
                }
                if let full = server.disk.reserve(header.size - opened.upload.held) {
                    store.close(opened.fd, opened.path) { [store] in store.keepTus(uploadID, bytes: opened.upload.held) }
                    perform(machine.uploadRefused(full))
                    return
                }
                reserved = header.size - opened.upload.held
                partial = opened
                uploadStarted = monotonicNanoseconds()
                let sink = UploadSink(path: opened.path, fs: store.fs, pool: pool, owner: self, startOffset: offset)
                self.sink = sink
                sink.opened(opened.fd)
                if offset == 0 {
                    server.tally(.started, .webSocket)
                    server.emit(.started(.init(transport: .webSocket, peer: peerText, clientName: header.name, uploadID: uploadID.hex, size: header.size)))
                }
                perform(machine.uploadOpened(offset: offset))
            }
        }
    }

    /// Every byte is in: flush, then link the partial under its name.
    private func commitUpload() {
        guard let sink, let upload = partial, !storing else { return }
        storing = true
        sink.flush { [self] error in
            if let error {
                storing = false
                sinkFailed(error)  // the partial is kept
                return
            }
            guard let fd = sink.takeDescriptor() else { storing = false; return }
            let header = upload.upload.header
            store.commit(fd, partialPath: upload.path, metaPath: upload.metaPath, name: header.name) { [self] result in
                storing = false
                partial = nil
                self.sink = nil
                server.disk.release(reserved)
                reserved = 0
                switch result {
                case .success(let stored):
                    store.tusStored(header.uploadID)
                    server.statistics.uploadsStored += 1
                    server.tally(.stored, .webSocket)
                    log(.info, "stored websocket upload", metadata: ["name": "\(stored)", "bytes": "\(header.size)"])
                    server.emit(.stored(StoredUpload(upload: .init(transport: .webSocket, peer: peerText, clientName: header.name, uploadID: header.uploadID.hex, size: header.size),
                                                     storedName: stored, path: store.finalPath(stored), digest: [], digestAlgorithm: nil,
                                                     duration: Server.seconds(since: uploadStarted))))
                    perform(machine.uploadStored(name: stored))
                case .failure(let error):
                    // The partial is closed but stays: a later `begin` with its id stores it.
                    store.keepTus(header.uploadID, bytes: header.size)
                    log(.error, "upload failed: \(error)")
                    recordFailure(.storage(error), header, resumable: true)
                    perform(machine.uploadFailed(.storage(error)))
                }
                flushOutput()
            }
        }
    }

    /// The connection ends with an upload open: what reached the file stays, resumable. An
    /// upload being stored is left to its commit.
    private func endUpload() {
        guard let sink, let upload = partial, !storing else { return }
        self.sink = nil
        partial = nil
        server.disk.release(reserved)
        reserved = 0
        let header = upload.upload.header
        recordFailure(.unexpectedEndOfStream(received: sink.writeOffset, expected: header.size), header, resumable: true)
        sink.flush { [store] _ in
            sink.close {
                store.keepTus(header.uploadID, bytes: sink.writeOffset)
            }
        }
    }

    private func recordFailure(_ reason: ProtocolError, _ header: FileHeader, resumable: Bool) {
        server.statistics.uploadsFailed += 1
        server.tally(.failed(code: reason.code), .webSocket)
        server.emit(.failed(.init(transport: .webSocket, peer: peerText, clientName: header.name, uploadID: header.uploadID.hex,
                                  size: header.size), reason: reason.description, code: reason.code, resumable: resumable))
    }

    private func closeNow() {
        guard !closing else { return }
        endUpload()
        if let h = held {
            pool.release(h.slab)
            held = nil
        }
        closeStream()
    }

    // MARK: - Served by the server

    override var hasUploadInProgress: Bool { machine.hasUploadInProgress }

    override func checkTimeouts(now: UInt64) {
        guard !closing else { return }
        let action = machine.tick(now: now)
        if action != .none { server.statistics.connectionsTimedOut += 1 }
        perform(action)
    }

    override func shutDownWhenIdle() {
        guard !closing else { return }
        perform(machine.drain())
    }

    override func cutIfWaitingForClient() {
        guard !closing else { return }
        if machine.isWaitingOnServer { return }
        if machine.hasUploadInProgress { server.drainCut(.keep) }
        perform(.close(code: 1001, reason: "the server is shutting down", message: nil))
        closeNow()
    }

    override func abort() {
        closeNow()  // the upload's partial stays: it resumes after a restart
    }
}
