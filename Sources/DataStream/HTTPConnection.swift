import DataStreamCore
import Glibc
import HTTPParsing
import Logging
import UV

/// The driver of one HTTP/1.1 connection: it parses what libuv reads (`HTTPRequestParser`),
/// feeds the requests to the connection's `HTTPConnectionMachine`, and carries out the actions
/// it returns: answering, opening a file for a body, writing the body, storing it.
///
/// Made by a `Connection` whose first bytes were an HTTP request; it takes that connection's
/// stream and its place in the server's table, and is held there until the stream's close
/// callback. It owns the stream, the input held back while a request is being answered (so
/// pipelined requests wait their turn), and the body's file and `UploadSink`.
final class HTTPConnection: TakenOverConnection, TCPStreamReader, UploadSinkOwner {
    private let parser: HTTPRequestParser
    private var machine: HTTPConnectionMachine
    /// Why the connection is not reading now (also `waitingForBuffer`).
    private var flowPaused = false
    private var peerEnded = false
    private var flow: WaterMarks
    /// Input not parsed yet because the machine does not take input now.
    private var held: (slab: Slab, start: Int, count: Int)?
    /// The slab the bytes being parsed are in (body events point into it).
    private var parsing: (slab: Slab, base: UnsafeRawPointer)?
    /// A form's body reader (`POST /`), and body bytes it has not taken yet (the machine was
    /// opening or storing a file): they go before any input held after them.
    private var form: MultipartParser?
    private var formPending: (slab: Slab, start: Int, count: Int)?

    // The upload in progress.
    private var sink: UploadSink?
    /// A PUT's file (without a name).
    private var partial: Store.SeedPartial?
    /// A tus PATCH's partial (its id is busy until the PATCH ends).
    private var tusPartial: Store.TusPartial?
    private var uploadName: String?
    private var diskHold = DiskHold()
    private var uploadStarted: UInt64 = 0
    private var failedFile: UVOperationError?
    /// The `101` answer of a WebSocket handshake: once the parse that found it returns, the
    /// connection goes to a `WebSocketConnection` with the input after the request.
    private var upgrade: [UInt8]?

    init(id: UInt64, server: Server, stream: TCPStream, acceptedPeer: SocketAddress?) {
        self.parser = HTTPRequestParser(maxHeadBytes: server.configuration.maxHTTPHeadBytes)
        self.machine = HTTPConnectionMachine(configuration: server.httpConfiguration, now: monotonicNanoseconds())
        self.flow = WaterMarks(low: server.configuration.connectionBufferLow, high: server.configuration.connectionBufferHigh)
        super.init(id: id, server: server, stream: stream, acceptedPeer: acceptedPeer, protocolName: "http")
        server.statistics.httpConnections += 1
    }

    /// Takes over with the input the first driver read (`count` bytes of `slab` from `start`).
    func start(_ slab: Slab, start: Int, count: Int) {
        machine.inputArrived(now: monotonicNanoseconds())
        process(slab, start: start, count: count)
        updateReading()
    }

    // MARK: - Reading

    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        switch event {
        case .data(let count):
            guard count > 0 else { return }
            machine.inputArrived(now: monotonicNanoseconds())
            let (slab, start) = pool.received(count)
            server.statistics.bytesReceived += UInt64(count)
            process(slab, start: start, count: count)
            updateReading()
        case .endOfStream:
            peerEnded = true
            do throws(HTTPRequestParser.Failure) { try parser.finish() } catch {
                log(.debug, "stream ended inside a request: \(error)")
            }
            perform(machine.endOfStream())
            updateReading()
        case .noBuffer:
            break
        case .failed(let error):
            log(.debug, "connection failed: \(error)")
            peerEnded = true
            perform(machine.endOfStream())
        }
    }

    func sinkReleased(_ count: Int) {
        if flow.removed(count) == .resume {
            flowPaused = false
            updateReading()
        }
    }

    func sinkFailed(_ error: UVOperationError) {
        guard machine.isReceivingBody else { return }  // a flush reports it otherwise
        failedFile = error
        perform(machine.uploadBroken(.storage(error)))
    }

    /// Parses input while the machine takes it; what it cannot take yet is held.
    private func process(_ slab: Slab, start: Int, count: Int) {
        if machine.dropsInput { return }
        if formPending != nil {
            pool.retain(slab)
            held = (slab, start, count)
            return
        }
        var offset = 0
        parsing = (slab, UnsafeRawPointer(slab.memory.baseAddress!))
        defer { parsing = nil }
        while offset < count, !closing, machine.takesInput || upgrade != nil {
            let input = UnsafeRawBufferPointer(rebasing: slab.memory[(start + offset)..<(start + count)])
            let n: Int
            do throws(HTTPRequestParser.Failure) {
                n = try parser.parse(input) { event in handle(event) }
            } catch {
                log(.info, "bad request: \(error)")
                server.statistics.httpBadRequests += 1
                perform(machine.parseFailed(headTooLarge: error.isHeadTooLarge, detail: error.description))
                return
            }
            offset += n
            if let switching = upgrade {
                // The parser paused after the head; one more parse takes the request's end.
                if !parser.upgraded, n > 0, offset < count { continue }
                handOverToWebSocket(switching, slab, start: start + offset, count: count - offset)
                return
            }
            if n == 0 { break }
        }
        if offset < count, !closing, !machine.dropsInput {
            pool.retain(slab)
            held = (slab, start + offset, count - offset)
        }
    }

    private func handle(_ event: HTTPRequestParser.Event) {
        guard !closing, upgrade == nil else { return }
        switch event {
        case .head(let head):
            server.statistics.httpRequests += 1
            log(.debug, "request", metadata: ["method": "\(head.method.name)", "target": "\(head.target)"])
            perform(machine.headReceived(head))
        case .body(let bytes):
            guard let parsing else { return }
            let start = bytes.baseAddress! - parsing.base
            if form != nil {
                feedForm(parsing.slab, start: start, count: bytes.count)
            } else {
                queueBody(parsing.slab, start: start, count: bytes.count)
            }
        case .end:
            if let form, !form.isFinished {
                perform(machine.formFailed("the body ended before the closing delimiter"))
            } else {
                form = nil
                perform(machine.messageComplete())
            }
        }
    }

    /// Gives a form's body bytes to its reader while the machine takes them; the rest waits
    /// (`formPending`), and parsing stops after this body event.
    private func feedForm(_ slab: Slab, start: Int, count: Int) {
        var at = 0
        while at < count, !closing, form != nil {
            guard machine.takesInput else {
                pool.retain(slab)
                formPending = (slab, start + at, count - at)
                parser.stopAfterThisEvent()
                return
            }
            let n: Int
            do throws(MultipartParser.Failure) {
                n = try form!.parse(UnsafeRawBufferPointer(rebasing: slab.memory[(start + at)..<(start + count)])) { event in
                    switch event {
                    case .partBegan(let part): perform(machine.partBegan(filename: part.filename))
                    case .data(let b): if machine.isReceivingBody { queueBody(slab, start: b.baseAddress! - UnsafeRawPointer(slab.memory.baseAddress!), count: b.count) }
                    case .carried(let b): if machine.isReceivingBody { queueBody(pool.slab(copying: b), start: 0, count: b.count) }
                    case .partEnded: perform(machine.partEnded())
                    case .finished: break
                    }
                }
            } catch {
                perform(machine.formFailed(error.description))
                return
            }
            at += n
            if n == 0 { break }
        }
    }

    /// Queues `count` body bytes of `slab` for the upload's file.
    private func queueBody(_ slab: Slab, start: Int, count: Int) {
            guard let sink else { return }
            let n = count
            if let more = diskHold.bytesArrived(UInt64(n)) {
                if let full = server.disk.reserve(more) {
                    perform(machine.uploadBroken(full))
                    return
                }
                diskHold.grew(by: more)
            }
            let action = machine.bodyReceived(n)
            if action != .none {
                perform(action)
                return
            }
            server.metrics.received(n, .http)
            if flow.added(n) == .pause { flowPaused = true }
            sink.append(slab, start: start, count: n)
    }

    /// Feeds the held input again, once the machine takes input.
    private func resumeHeld() {
        if let f = formPending, !closing, machine.takesInput {
            formPending = nil
            feedForm(f.slab, start: f.start, count: f.count)
            pool.release(f.slab)
            if formPending != nil { updateReading(); return }
        }
        guard let h = held, !closing, formPending == nil, machine.takesInput || machine.dropsInput else { updateReading(); return }
        held = nil
        process(h.slab, start: h.start, count: h.count)
        pool.release(h.slab)
        updateReading()
    }

    override func updateReading() {
        guard !closing, stream.isOpen else { return }
        let shouldRead = !peerEnded && !waitingForBuffer && !flowPaused && held == nil && formPending == nil && (machine.takesInput || machine.dropsInput)
        if shouldRead && !stream.isReading {
            do throws(UVOperationError) { try stream.startReading(self) } catch { closeNow() }
        } else if !shouldRead && stream.isReading {
            stream.stopReading()
        }
    }

    // MARK: - Actions

    private func perform(_ action: HTTPConnectionMachine.Action) {
        guard !closing else {
            if case .abortUpload(_, _, let keep) = action { endFile(keep: keep) }  // a file that finished opening after the close
            return
        }
        switch action {
        case .none:
            break
        case .send(let bytes):
            try? stream.write(bytes)
        case .respond(let response, let headOnly):
            respond(response, headOnly: headOnly)
        case .serve(let resource, let headOnly):
            respond(server.httpResource(resource), headOnly: headOnly)
        case .openUpload(let name, let declared):
            openUpload(name: name, declaredSize: declared)
        case .commitUpload(let size):
            commitUpload(size: size)
        case .abortUpload(let response, let reason, let keep):
            failUpload(reason, keepPartial: keep)
            if let response {
                respondAndEnd(response)
            } else {
                closeNow()
            }
        case .close:
            closeNow()
        case .createTusUpload(let name, let length):
            let stored = name ?? store.nextSeedName().description
            store.createTus(name: stored, length: length, owner: peer?.hostIdentityBytes ?? []) { [self] r in
                switch r {
                case .success(let id):
                    log(.info, "tus upload created", metadata: ["upload": "\(id)", "name": "\(stored)", "length": "\(length)"])
                    server.tally(.started, .http)
                    server.emit(.started(.init(transport: .http, peer: peerText, clientName: stored, uploadID: id.hex, size: length)))
                    perform(machine.tusCreated(id, now: Int(time(nil))))
                case .failure(let e):
                    perform(machine.uploadRefused(e))
                }
                resumeHeld()
            }
        case .lookUpTusUpload(let id):
            store.lookUpTus(id) { [self] r in
                switch r {
                case .success(let found?): perform(machine.tusFound(offset: found.held, length: found.header.size))
                case .success(nil): perform(machine.tusMissing())
                case .failure(let e): perform(machine.uploadRefused(e))
                }
                resumeHeld()
            }
        case .terminateTusUpload(let id):
            store.terminateTus(id) { [self] r in
                switch r {
                case .success:
                    log(.info, "tus upload terminated", metadata: ["upload": "\(id)"])
                    perform(machine.tusTerminated())
                case .failure(let refusal): perform(refused(refusal))
                }
                resumeHeld()
            }
        case .resumeTusUpload(let id, let offset):
            resumeTus(id, offset: offset)
        case .keepUpload:
            keepTusUpload()
        case .readForm(let boundary, let continueFirst):
            form = MultipartParser(boundary: boundary)
            if continueFirst { try? stream.write(HTTPResponse.continueBytes) }
        case .upgradeToWebSocket(let switching):
            upgrade = switching
        case .linger:
            // Shut down the sending side once the response is out; read and drop until the end.
            try? stream.shutdown()
            updateReading()
        }
    }

    private func respond(_ response: HTTPResponse, headOnly: Bool) {
        server.statistics.httpResponses[response.status, default: 0] += 1
        do throws(UVOperationError) { try stream.write(response.encoded(close: machine.closesAfterResponse, headOnly: headOnly)) } catch {
            log(.debug, "write failed: \(error)")
            closeNow()
            return
        }
        perform(machine.responseSent(now: monotonicNanoseconds()))
        resumeHeld()
    }

    /// The answer to an abandoned upload: written, then the connection lingers (drops what the
    /// client still sends, until its end or the machine's limit) or, once the write is out, closes.
    private func respondAndEnd(_ response: HTTPResponse) {
        server.statistics.httpResponses[response.status, default: 0] += 1
        try? stream.write(response.encoded(close: true))
        if machine.dropsInput {
            try? stream.shutdown()
            updateReading()
        } else {
            closeNow()
        }
    }

    private func openUpload(name: String?, declaredSize: UInt64?) {
        if let declaredSize {
            if let full = server.disk.reserve(declaredSize) {
                log(.warning, "upload refused: \(full)")
                refuse(full)
                return
            }
            diskHold.fixed(declaredSize)
        } else {
            diskHold.growing(upTo: machine.configuration.maxFileSize, granted: 0)
        }
        uploadName = name
        uploadStarted = monotonicNanoseconds()
        server.tally(.started, .http)
        server.emit(.started(.init(transport: .http, peer: peerText, clientName: name, size: declaredSize ?? 0)))
        let sink = UploadSink(path: "", fs: store.fs, pool: pool, owner: self)
        self.sink = sink
        store.openSeedPartial { [self] result in
            switch result {
            case .success(let opened):
                guard self.sink === sink, !closing else {
                    store.discardSeed(opened)
                    sink.openFailed(UVOperationError("fs_open", target: opened.label, code: UVError.canceled.code))
                    perform(machine.uploadOpened())
                    return
                }
                partial = opened
                sink.opened(opened.fd, path: opened.label)
                perform(machine.uploadOpened())
                resumeHeld()
            case .failure(let error):
                failedFile = error
                sink.openFailed(error)
                self.sink = nil
                recordFailure(.storage(error))
                refuse(.storage(error))
            }
        }
    }

    /// What the machine is told of a tus upload the store would not open.
    private func refused(_ refusal: Store.TusRefusal) -> HTTPConnectionMachine.Action {
        switch refusal {
        case .notFound: machine.tusMissing()
        case .busy: machine.uploadRefused(.uploadBusy)
        case .offsetMismatch(let held): machine.uploadRefused(.resumeMismatch(detail: "Upload-Offset must be \(held), the bytes the server holds"))
        case .failed(let e): machine.uploadRefused(e)
        }
    }

    private func resumeTus(_ id: UploadID, offset: UInt64) {
        uploadStarted = monotonicNanoseconds()
        store.openTus(id, offset: offset) { [self] r in
            switch r {
            case .failure(let refusal):
                perform(refused(refusal))
            case .success(let opened):
                let header = opened.upload.header
                if closing {
                    store.close(opened.fd, opened.path) { [store] in store.keepTus(id, bytes: opened.upload.held) }
                    return
                }
                if let full = server.disk.reserve(header.size - opened.upload.held) {
                    store.close(opened.fd, opened.path) { [store] in store.keepTus(id, bytes: opened.upload.held) }
                    perform(machine.uploadRefused(full))
                    break
                }
                diskHold.fixed(header.size - opened.upload.held)
                tusPartial = opened
                uploadName = header.name
                let sink = UploadSink(path: opened.path, fs: store.fs, pool: pool, owner: self, startOffset: offset)
                self.sink = sink
                sink.opened(opened.fd)
                perform(machine.uploadOpened(tusLength: header.size))
            }
            resumeHeld()
        }
    }

    /// A PATCH's bytes are in, the upload not complete: its partial is flushed, closed and kept.
    private func keepTusUpload() {
        guard let sink, tusPartial != nil else { return }
        sink.flush { [self] error in
            if let error {
                failedFile = error
                failUpload(.storage(error), keepPartial: true)
                perform(machine.uploadFailed(.storage(error)))
                return
            }
            endFile(keep: true) { [self] in perform(machine.uploadKept(now: Int(time(nil)))) }
        }
    }

    private func refuse(_ error: ProtocolError) {
        server.disk.release(diskHold.release())
        perform(machine.uploadRefused(error))
    }

    private func commitUpload(size: UInt64) {
        guard let sink else { return }
        sink.flush { [self] error in
            if let error {
                failedFile = error
                failUpload(.storage(error))
                perform(machine.uploadFailed(.storage(error)))
                return
            }
            if let tus = tusPartial {
                guard let fd = sink.takeDescriptor() else { return }
                store.commit(fd, partialPath: tus.path, metaPath: tus.metaPath, name: tus.upload.header.name) { [self] result in
                    tusPartial = nil
                    self.sink = nil
                    server.disk.release(diskHold.release())
                    switch result {
                    case .success(let stored):
                        store.tusStored(tus.upload.header.uploadID)
                        announceStored(stored, size: size, id: tus.upload.header.uploadID)
                    case .failure(let error):
                        // The partial is closed but stays: the client may PATCH nothing more, but
                        // its bytes are not lost; the sweep removes it when it expires.
                        store.keepTus(tus.upload.header.uploadID, bytes: size)
                        failedFile = error
                        recordFailure(.storage(error))
                        perform(machine.uploadFailed(.storage(error)))
                    }
                }
                return
            }
            guard let written = partial, sink.takeDescriptor() != nil else { return }
            let name = uploadName ?? store.nextSeedName().description
            store.commit(written, underClientName: name) { [self] result in
                partial = nil
                self.sink = nil
                server.disk.release(diskHold.release())
                switch result {
                case .success(let stored):
                    announceStored(stored, size: size, id: nil)
                case .failure(let error):
                    failedFile = error
                    recordFailure(.storage(error))
                    perform(machine.uploadFailed(.storage(error)))
                }
            }
        }
    }

    private func announceStored(_ name: String, size: UInt64, id: UploadID?) {
        server.statistics.uploadsStored += 1
        server.tally(.stored, .http)
        log(.info, "stored http upload", metadata: ["name": "\(name)", "bytes": "\(size)"])
        server.emit(.stored(StoredUpload(upload: .init(transport: .http, peer: peerText, clientName: uploadName, uploadID: id?.hex, size: size),
                                         storedName: name, path: store.finalPath(name), digest: [], digestAlgorithm: nil,
                                         duration: Server.seconds(since: uploadStarted))))
        perform(machine.uploadStored(name: name))
        resumeHeld()  // a form goes on with its next part
    }

    /// The upload ends without being stored: counted, logged, reported, and its file dropped
    /// (a tus upload's partial kept, unless the machine said otherwise).
    private func failUpload(_ reason: ProtocolError, keepPartial: Bool = false) {
        guard sink != nil else { server.disk.release(diskHold.release()); return }
        recordFailure(reason, resumable: tusPartial != nil && keepPartial)
        endFile(keep: keepPartial)
    }

    private func recordFailure(_ reason: ProtocolError, resumable: Bool = false) {
        switch reason {
        case .storageFailed, .diskFull: log(.error, "upload failed: \(reason)\(failedFile.map { " (\($0))" } ?? "")")
        default: log(.warning, "broken upload: \(reason)")
        }
        server.statistics.uploadsFailed += 1
        server.tally(.failed(code: reason.code), .http)
        emitFailed(reason, resumable: resumable)
    }

    private func emitFailed(_ reason: ProtocolError, resumable: Bool = false) {
        server.emit(.failed(.init(transport: .http, peer: peerText, clientName: uploadName, uploadID: tusPartial?.upload.header.uploadID.hex,
                                  size: tusPartial?.upload.header.size ?? diskHold.limit), reason: reason.description, code: reason.code, resumable: resumable))
    }

    /// Ends the upload's file: a PUT's is dropped; a tus upload's partial is closed and kept
    /// (`keep`) or deleted. Gives back its room; `then` runs once the file is closed.
    private func endFile(keep: Bool, then: @escaping () -> Void = {}) {
        server.disk.release(diskHold.release())
        guard let sink else { then(); return }
        self.sink = nil
        let named = partial?.path
        partial = nil
        let tus = tusPartial
        tusPartial = nil
        sink.finish { [store] fd in
            if let tus, !keep {
                // Removed before its descriptor closes, so no other process claims it half removed.
                store.discard(fd, path: tus.path, metaPath: tus.metaPath)
                store.release(tus.upload.header.uploadID)
                then()
                return
            }
            // Closed before the id is free and `then` answers: the next PATCH finds it unlocked.
            store.close(fd, sink.path) {
                if let named { store.unlinkQuietly(named) }
                if let tus { store.keepTus(tus.upload.header.uploadID, bytes: sink.writeOffset) }
                then()
            }
        }
    }

    private func closeNow() {
        guard !closing else { return }
        // A tus upload's partial stays for the next PATCH, whatever ended the connection.
        failUpload(.unexpectedEndOfStream(received: diskHold.received, expected: diskHold.limit), keepPartial: tusPartial != nil)
        if let h = held {
            pool.release(h.slab)
            held = nil
        }
        if let f = formPending {
            pool.release(f.slab)
            formPending = nil
        }
        closeStream()
    }

    /// Writes the handshake's answer; a `WebSocketConnection` takes the stream, the input
    /// after the request and this connection's place in the server's table.
    private func handOverToWebSocket(_ switching: [UInt8], _ slab: Slab, start: Int, count: Int) {
        letGoOfStream()
        server.statistics.httpResponses[101, default: 0] += 1
        do throws(UVOperationError) { try stream.write(switching) } catch {
            log(.debug, "write failed: \(error)")
            stream.close { [self] in server.connectionClosed(self) }
            return
        }
        let ws = WebSocketConnection(id: id, server: server, stream: stream, acceptedPeer: acceptedPeer)
        server.connections.replace(self, with: ws)
        ws.start(slab, start: start, count: count)
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
        if machine.hasUploadInProgress {
            server.drainCut(tusPartial != nil ? .keep : .discard)
            failUpload(.shuttingDown, keepPartial: tusPartial != nil)
        }
        closeNow()
    }

    override func abort() {
        failUpload(.shuttingDown, keepPartial: tusPartial != nil)  // a tus upload resumes after a restart
        closeNow()
    }
}
