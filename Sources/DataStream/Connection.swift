import DataStreamCore
import Glibc
import Logging
import UV

/// The driver of one accepted TCP connection: it feeds what libuv reports into the connection's
/// `ConnectionStateMachine` and carries out the actions the machine returns.
///
/// Owned by the `Server` (in its connection table) from accept until its stream's close
/// callback. It owns its `TCPStream`, the input it holds back, and its upload's `UploadSink`.
/// Reading stops while any of these holds: the connection's own buffered bytes passed their high
/// mark, every receive slab of the process is in use, or the machine asked to hold input for a pending
/// file operation.
///
/// Properties marked `@exclusivity(unchecked)` are read and written on every read or upload
/// (Swift checks each access to a class's stored property at run time, a large share of the
/// receiver's user-space work on small uploads). Each is a plain value only ever read or
/// assigned in place, or (`machine`) changed by a mutating call that never calls out, so no
/// two accesses can overlap; a property passed `inout` across a call must not be marked.
final class Connection: ServedConnection, TCPStreamReader, UploadSinkOwner, BufferWaiter, SmallUploadOwner {
    let id: UInt64
    private let server: Server
    private let stream: TCPStream
    @exclusivity(unchecked) private var machine: ConnectionStateMachine
    /// The peer for log lines: looked up only when a line is logged (one `getpeername` less
    /// per connection otherwise).
    private var peer: SocketAddress? { acceptedPeer ?? (try? stream.peerAddress()) }
    /// The peer for events (`Server.onEvent`): looked up once, only when a handler is set.
    private lazy var peerText: String = peer?.description ?? "?"
    /// The size the seed upload in progress announced, for events.
    private var seedDeclared: UInt64 = 0
    /// When the upload in progress began (monotonic nanoseconds), for events.
    private var uploadStartedAt: UInt64 = 0
    /// Timeouts, the server's drain and the choice of path: decided by the machine.
    @exclusivity(unchecked) private var lifecycle: ConnectionLifecycle
    /// Why the connection is not reading now (it reads while none holds and the protocol
    /// machine expects input).
    @exclusivity(unchecked) private var pauses: ReadPauses = []
    /// The disk space the current upload holds in the server's budget (given back when it ends).
    @exclusivity(unchecked) private var diskHold = DiskHold()
    /// The server's logger with this connection's id and peer, built when a message is first
    /// logged at an enabled level (`log`): setting metadata formats it, which is costly when
    /// every upload's debug and info lines build it.
    private lazy var logger: Logger = {
        var logger = server.logger
        logger[metadataKey: "connection"] = "\(id)"
        logger[metadataKey: "peer"] = "\(peer?.description ?? "?")"
        return logger
    }()

    /// Logs through `logger` only if `level` is enabled (nothing is built or formatted otherwise).
    private func log(_ level: Logger.Level, _ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata? = nil) {
        guard server.logLevel <= level else { return }
        logger.log(level: level, message(), metadata: metadata())
    }
    private let pool: BufferPool
    private let store: Store
    /// The bytes a running drain had waiting at the last timeout check.
    private var drainWaitingSeen = 0

    /// Input the machine could not take yet (`.wait`): fed again once the pending file
    /// operation answers (`pauses` holds `.heldInput` meanwhile).
    @exclusivity(unchecked) private var held: (slab: Slab, start: Int, count: Int)?
    private var flow: WaterMarks
    @exclusivity(unchecked) private var closing = false

    // The upload in progress.
    private var sink: UploadSink?
    private var native: Store.NativePartial?
    private var nativeHeader: FileHeader?
    /// Set instead of `native` when the announced upload was stored before (its receipt): the
    /// client's END is checked against the receipt's digest and answered with its name.
    private var storedReceipt: UploadReceipt?
    /// A seed upload's file once open (its descriptor belongs to `sink` until the commit takes it).
    private var seedPartial: Store.SeedPartial?
    /// A small seed upload in progress (held in memory, stored in one work item at the end).
    @exclusivity(unchecked) private var small = SmallUpload()
    private var finishCancelled = false
    /// The file operation that failed the upload, for the log line (the reply does not name it).
    private var failedFile: UVOperationError?

    /// The rest of a large upload, moving straight from the socket to the file (the lifecycle
    /// machine decides when; `pauses` holds `.drainStarting`, then `.draining`).
    private var drain: SocketDrain?
    /// A close asked for while a drain's work item was running: carried out once it stopped.
    private var closeAfterDrain: (reply: [UInt8]?, reason: ProtocolError?, partial: ConnectionStateMachine.PartialDisposition)?

    /// The first bytes must not be a PROXY header (`--proxy-protocol` is on and this peer is
    /// not a proxy allowed to send one).
    var refusesProxyHeaders = false

    init(id: UInt64, server: Server, stream: TCPStream, acceptedPeer: SocketAddress?) {
        self.id = id
        self.server = server
        self.stream = stream
        self.pool = server.pool
        self.store = server.store
        self.machine = ConnectionStateMachine(configuration: server.machineConfiguration)
        self.flow = WaterMarks(low: server.configuration.connectionBufferLow, high: server.configuration.connectionBufferHigh)
        self.lifecycle = ConnectionLifecycle(configuration: server.lifecycleConfiguration, now: monotonicNanoseconds())
        super.init(acceptedPeer: acceptedPeer)
    }

    /// Starts serving the accepted connection. What the client sent before the accept is read
    /// at once (`TCPStream.readNow`, a few reads at most); only if more is expected is the socket
    /// handed to the loop to poll. A small seed upload whose bytes and end are already there
    /// is then served with no epoll registration at all: no
    /// `epoll_ctl` to add and remove it, no poll round before its first byte.
    func start() {
        readWithoutPolling()
        if pauses.contains(.peerEnded) || !machine.expectsInput { server.statistics.servedAtAccept += 1 }
    }

    /// Reads what the socket holds now (`TCPStream.readNow`, at most `readsWithoutPolling`
    /// times), then lets the loop poll it if more is expected (`updateReading`). Used at accept
    /// and when a receive buffer comes back (`buffersAvailable`, through the server's
    /// `readSoon`): starting to read through libuv costs an `epoll_ctl` to add the socket and
    /// one to remove it when reading stops again, and a poll round before the first byte.
    /// A large upload is left to the loop (and then to a drain, which splices): reading it here
    /// would pull its bytes through the receive slabs.
    /// Returns how many reads it made (none if the connection closed or cannot read now).
    @discardableResult
    func readWithoutPolling() -> Int {
        var reads = 0
        while reads < Connection.readsWithoutPolling, !closing, pauses.isEmpty, machine.expectsInput, !stream.isReading,
              lifecycle.readsWithoutPolling(bytesExpected: machine.fileBytesExpected), stream.readNow(self) {
            reads += 1
            server.statistics.readsWithoutPolling += 1
        }
        updateReading()
        return reads
    }

    /// The most reads `readWithoutPolling` makes before handing the socket to the loop: the
    /// data, its end, and a little slack for bytes that came in several segments.
    static let readsWithoutPolling = 3

    // MARK: - Reading

    func readBuffer(for stream: TCPStream, suggestedSize: Int) -> UnsafeMutableRawBufferPointer? {
        if let buffer = pool.readBuffer(for: self) { return buffer }
        pauses.insert(.buffer) // the pool calls buffersAvailable when a slab comes back
        return nil
    }

    func stream(_ stream: TCPStream, didRead event: ReadEvent, buffer: UnsafeMutableRawBufferPointer?) {
        switch event {
        case .data(let count):
            guard count > 0 else { return }
            if refusesProxyHeaders, let buffer {
                refusesProxyHeaders = false
                if ProxyProtocol.looksLikeHeader(UnsafeRawBufferPointer(rebasing: buffer[0..<count])) {
                    _ = pool.received(count)  // the lent buffer is accounted for, its bytes dropped
                    server.statistics.connectionsRefused += 1
                    closeConnection(reply: nil, reason: .connectionFailed(reason: "a PROXY header from an address not allowed to send one (--proxy-protocol)"), partial: .none)
                    return
                }
            }
            lifecycle.clientSent(now: monotonicNanoseconds())
            let (slab, start) = pool.received(count)
            server.statistics.bytesReceived += UInt64(count)
            process(slab, start: start, count: count)
        case .endOfStream:
            pauses.insert(.peerEnded)
            lifecycle.clientSent(now: monotonicNanoseconds())
            perform(machine.endOfStream())
            startPendingSmallFinish()
        case .noBuffer:
            break // registered with the pool in readBuffer; reading resumes in buffersAvailable
        case .failed(let error):
            perform(machine.connectionFailed(error.description))
        }
    }

    func buffersAvailable() {
        pauses.remove(.buffer)
        // Called from inside the pool (possibly while another connection's read is being
        // served): the read itself waits for the server's next turn of the loop.
        if !server.readSoon(self) { updateReading() }
    }

    func sinkReleased(_ count: Int) {
        if flow.removed(count) == .resume {
            pauses.remove(.flow)
            updateReading()
        }
    }

    func sinkFailed(_ error: UVOperationError) {
        // Otherwise a flush is waiting on the sink and reports the failure itself.
        if machine.isReceivingFileBytes {
            storageFailed(error)
        }
    }

    /// Feeds input to the machine until it is all taken or the machine must wait.
    private func process(_ slab: Slab, start: Int, count: Int) {
        var offset = 0
        while offset < count && !closing {
            let step = machine.bytesReceived(UnsafeRawBufferPointer(rebasing: slab.memory[(start + offset)..<(start + count)]))
            if case .handOverToHTTP = step.action {
                handOverToHTTP(slab, start: start + offset, count: count - offset)
                return
            }
            if step.fileBytes > 0 {
                var completes = false
                if case .finishSeedUpload = step.action { completes = true }
                queueFileBytes(slab, start: start + offset, count: step.fileBytes, completingUpload: completes)
            }
            offset += step.consumed
            if case .wait = step.action {
                pool.retain(slab)
                held = (slab, start + offset, count - offset)
                pauses.insert(.heldInput)
                updateReading()
                return
            }
            perform(step.action)
        }
        startPendingSmallFinish()
        considerDrain()
    }

    private func startPendingSmallFinish() {
        guard let f = small.pendingFinish, !closing else { return }
        small.pendingFinish = nil
        finishSmallSeed(prefix: f.prefix, size: f.size)
    }

    /// Feeds the input held back by `.wait` again, once the pending operation has answered.
    private func resumeHeld() {
        guard let h = held, !closing else { updateReading(); return }
        held = nil
        pauses.remove(.heldInput)
        process(h.slab, start: h.start, count: h.count)
        pool.release(h.slab)
        updateReading()
    }

    /// Seed uploads whose reservation is less than their longest reading: hold space for
    /// `n` more bytes, or fail the upload with "disk full". False if it failed.
    private func coverSeedBytes(_ n: UInt64) -> Bool {
        guard let more = diskHold.bytesArrived(n) else { return true }
        if server.disk.reserve(more) != nil {
            perform(machine.uploadFailed(.diskFull(reason: "\(diskHold.received) bytes received of a seed upload of up to \(diskHold.limit), and no room for more (less \(server.disk.minimumFree) kept free and what other uploads hold)")))
            return false
        }
        diskHold.grew(by: more)
        return true
    }

    private func queueFileBytes(_ slab: Slab, start: Int, count: Int, completingUpload: Bool) {
        guard coverSeedBytes(UInt64(count)) else { return }
        server.metrics.received(count, machine.isSeed ? .seedTCP : .tcp)
        if small.isActive {
            if !small.append(slab, start: start, count: count, completing: completingUpload, pool: pool, blocks: server.smallBuffers) {
                perform(machine.uploadFailed(.storageFailed(reason: "more bytes than the declared size")))
            }
            return
        }
        guard let sink else { preconditionFailure("file data without an upload") }
        if flow.added(count) == .pause {
            pauses.insert(.flow)
            updateReading()
        }
        sink.append(slab, start: start, count: count)
    }

    private func updateReading() {
        guard !closing, stream.isOpen else { return }
        let shouldRead = pauses.isEmpty && machine.expectsInput
        if shouldRead && !stream.isReading {
            // The pause was the server's (no buffer, disk behind), not the client's silence.
            lifecycle.readingResumed(now: monotonicNanoseconds())
            do { try stream.startReading(self) } catch {
                closeConnection(reply: nil, reason: .connectionFailed(reason: error.description), partial: currentPartialDisposition)
            }
        } else if !shouldRead && stream.isReading {
            stream.stopReading()
        }
    }

    /// Hands the rest of a large upload to a `SocketDrain` once its queued writes are done.
    private func considerDrain() {
        guard !pauses.contains(.draining), !pauses.contains(.drainStarting), !closing, held == nil, !small.isActive, let sink, sink.fd != nil,
              lifecycle.shouldDrainSocket(bytesExpected: machine.fileBytesExpected, splices: sink.digester == nil, drainsRunning: server.drainsRunning)
        else { return }
        pauses.insert(.drainStarting)
        updateReading()
        sink.flush { [self] error in
            pauses.remove(.drainStarting)
            guard !closing, closeAfterDrain == nil else { return }
            if let error {
                storageFailed(error)
                return
            }
            let remaining = machine.fileBytesExpected
            guard self.sink === sink, let fd = sink.fd, remaining > 0 else { updateReading(); return }
            do {
                let d = try SocketDrain(loop: server.loop, stream: stream, file: fd, path: seedPartial?.label ?? native?.path ?? "", offset: sink.writeOffset,
                                        remaining: remaining, digester: sink.digester,
                                        onProgress: { [self] n, next in
                                            sink.advance(by: n)
                                            guard coverSeedBytes(n) else { return }
                                            lifecycle.clientSent(now: monotonicNanoseconds())
                                            server.statistics.bytesReceived += n
                                            server.statistics.bytesDrained += n
                                            server.metrics.received(Int(n), machine.isSeed ? .seedTCP : .tcp)
                                            let action = machine.fileBytesMovedDirectly(n)
                                            if case .finishSeedUpload = action, var byte = next {
                                                // A byte already follows the seed upload's last one: as on
                                                // the slab path, bytes in hand past the size break it.
                                                let step = withUnsafeBytes(of: &byte) { machine.bytesReceived($0) }
                                                perform(step.action)
                                            } else {
                                                perform(action)
                                            }
                                        },
                                        onEnd: { [self] end in drainEnded(end) })
                drain = d
                pauses.insert(.draining)
                server.drainsRunning += 1
                server.statistics.peakDrainsRunning = max(server.statistics.peakDrainsRunning, server.drainsRunning)
                server.statistics.uploadsDrained += 1
                d.start()
            } catch {
                // Nothing was taken from the stream: its bytes go on through the slabs.
                log(.debug, "upload not drained: \(error)")
                lifecycle.socketDrainRefused()
                updateReading()
            }
        }
    }

    private func drainEnded(_ end: SocketDrain.End) {
        drain = nil
        drainWaitingSeen = 0
        pauses.remove(.draining)
        server.drainsRunning -= 1
        switch end {
        case .complete:
            updateReading()  // what follows the file (END frame, trailing bytes, end of stream)
        case .endOfStream:
            perform(machine.endOfStream())
        case .failed(let error) where error.operation == "pwrite":
            storageFailed(error)
        case .failed(let error):
            perform(machine.connectionFailed(error.description))
        case .cancelled:
            if let c = closeAfterDrain {
                closeAfterDrain = nil
                closeConnection(reply: c.reply, reason: c.reason, partial: c.partial)
            }
        }
    }

    /// What to do with the partial if the connection ends now: native partials are resumable.
    /// Whether an upload has begun on this connection and not ended (see the machine).
    override var hasUploadInProgress: Bool { machine.hasUploadInProgress }

    /// What stopping now would do to the current upload's partial: kept for resume (native),
    /// deleted (seed), or nothing (no upload).
    var currentPartialDisposition: ConnectionStateMachine.PartialDisposition {
        seedPartial != nil || small.isActive ? .discard : (nativeHeader != nil ? .keep : .none)
    }

    // MARK: - Actions

    private func perform(_ action: ConnectionStateMachine.Action) {
        guard !closing else { return }
        defer {
            if server.isDraining { shutDownWhenIdle() }
            if server.drainDeadlinePassed { cutIfWaitingForClient() }
        }
        switch action {
        case .none, .wait:
            break
        case .send(let bytes):
            send(bytes)
        case .startSeedUpload(let declared):
            lifecycle.uploadBegan()
            uploadStartedAt = monotonicNanoseconds()
            // A size field that may include the file's leading digits has shorter readings:
            // refused only if even the shortest does not fit; then the space held grows with
            // the bytes that arrive (`coverSeedBytes`), failing as soon as they would not fit.
            let shortest = machine.seedSizeRange?.lowerBound ?? declared
            if server.disk.reserve(declared) == nil {
                diskHold.growing(upTo: declared, granted: declared)
            } else if let full = server.disk.reserve(shortest) {
                log(.warning, "seed upload refused: \(full)")
                perform(machine.uploadFailed(full))
                return
            } else {
                diskHold.growing(upTo: declared, granted: shortest)
            }
            log(.debug, "seed upload started", metadata: ["declared": "\(declared)"])
            seedDeclared = declared
            server.tally(.started, .seedTCP)
            server.emit(.started(.init(transport: .seedTCP, peer: peerText, size: declared)))
            if case .small(let capacity) = lifecycle.seedPath(declared: declared, smallBytesInUse: server.smallUploadBytesInUse) {
                server.smallUploadBytesInUse += capacity
                small.begin(reserved: capacity, declared: Int(declared))
            } else {
                startSeedSink()
            }
        case .finishSeedUpload(let prefix, let size):
            finishSeed(prefix: prefix, size: size)
        case .openUpload(let header):
            lifecycle.uploadBegan()
            uploadStartedAt = monotonicNanoseconds()
            if let full = server.disk.reserve(header.size) {
                // No room for a new upload; one stored before needs none (its receipt answers).
                openNative(header, refusingNewWith: full)
                return
            }
            diskHold.fixed(header.size)
            openNative(header)
        case .verifyUpload:
            if let storedReceipt {
                perform(machine.digestComputed(storedReceipt.digest))
                resumeHeld()
                return
            }
            guard let sink else { preconditionFailure("verify without an upload") }
            sink.flush { [self] error in
                if let error {
                    storageFailed(error)
                } else {
                    perform(machine.digestComputed(sink.digester!.finish()))
                }
                resumeHeld()
            }
        case .commitUpload:
            commitNative()
        case .discardUpload(let reply):
            if storedReceipt != nil, let header = nativeHeader {
                // The client's file is not the one stored under this id: the stored file and
                // its receipt stay, so whoever knows an id cannot make its owner's resend a
                // second copy.
                log(.warning, "upload refused: digest mismatch with the upload stored under this id", metadata: ["upload": "\(header.uploadID)", "name": "\(header.name)"])
                server.statistics.uploadsFailed += 1
                server.tally(.failed(code: ProtocolError.resumeMismatch(detail: "").code), .tcp)
                server.emit(.failed(.native(header, transport: .tcp, peer: peerText), reason: "digest mismatch with the upload stored under this id", code: ProtocolError.resumeMismatch(detail: "").code, resumable: false))
                store.release(header.uploadID)
            } else if let native, let header = nativeHeader {
                log(.warning, "upload refused: digest mismatch", metadata: ["upload": "\(header.uploadID)", "name": "\(header.name)"])
                server.statistics.uploadsFailed += 1
                server.tally(.failed(code: ProtocolError.resumeMismatch(detail: "").code), .tcp)
                server.emit(.failed(.native(header, transport: .tcp, peer: peerText), reason: "digest mismatch", code: ProtocolError.resumeMismatch(detail: "").code,
                                    resumable: MismatchedPartial.decide(heldAtOpen: native.held, heldNow: sink?.writeOffset ?? native.held).keepsPartial))
                store.mismatched(header.uploadID, fd: sink?.takeDescriptor(), path: native.path, metaPath: native.metaPath,
                                 heldAtOpen: native.held, heldNow: sink?.writeOffset ?? native.held) { [store] in store.release(header.uploadID) }
            }
            clearUpload()
            send(reply)
        case .close(let reply, let reason, let partial):
            closeConnection(reply: reply, reason: reason, partial: partial)
        case .handOverToHTTP:
            break  // taken in `process`, with the input it concerns
        }
    }

    /// The client speaks HTTP: an `HTTPConnection` takes the stream, the input read so far and
    /// this connection's place in the server's table. This driver does nothing more.
    private func handOverToHTTP(_ slab: Slab, start: Int, count: Int) {
        closing = true
        stream.stopReading()
        pool.cancelWait(self)
        let http = HTTPConnection(id: id, server: server, stream: stream, acceptedPeer: acceptedPeer)
        server.connections.replace(self, with: http)
        http.start(slab, start: start, count: count)
    }

    /// A file operation failed: the client hears the operation and the error, never the
    /// server's path (`ProtocolError.storage`); the log line when the connection ends names
    /// the file (`failedFile`).
    private func storageFailed(_ error: UVOperationError) {
        failedFile = error
        perform(machine.uploadFailed(.storage(error)))
    }

    private func send(_ bytes: [UInt8]) {
        do { try stream.write(bytes) } catch {
            log(.debug, "write failed: \(error)")
        }
    }

    private func startSeedSink() {
        let sink = UploadSink(path: "", fs: store.fs, pool: pool, owner: self)
        self.sink = sink
        store.openSeedPartial { [self] result in
            switch result {
            case .success(let partial):
                guard self.sink === sink, !closing else {
                    // The connection ended while the file was opening: drop both.
                    store.discardSeed(partial)
                    sink.openFailed(UVOperationError("fs_open", target: partial.label, code: UVError.canceled.code))
                    return
                }
                seedPartial = partial
                sink.opened(partial.fd, path: partial.label)
                considerDrain()  // the bytes that came while it opened may leave enough to drain
            case .failure(let error):
                sink.openFailed(error)
            }
        }
    }

    /// Stores a small seed upload (the prefix digits, then its bytes) in one work item.
    private func finishSmallSeed(prefix: SeedDigits, size: UInt64) {
        small.storing = true
        small.size = size
        store.storeSmall(prefix: prefix, bytes: small.bytes, owner: self)
    }

    func smallUploadDone(_ result: Result<SeedUploadName, UVOperationError>) {
        let size = small.size
        small.storing = false
        freeSmall()
        switch result {
        case .success(let stored):
            server.statistics.uploadsStored += 1
            log(.info, "stored seed upload", metadata: ["name": "\(stored)", "bytes": "\(size)"])
            server.tally(.stored, .seedTCP)
            server.emit(server.seedStored(transport: .seedTCP, peer: peerText, size: size, storedName: "\(stored)", startedAt: uploadStartedAt))
            perform(machine.seedStored())
        case .failure(let error):
            storageFailed(error)
        }
    }

    /// Gives back the small upload's bytes (block or slab) and its reservation (not while a
    /// work item still writes them).
    private func freeSmall() {
        guard small.isActive, !small.storing else { return }
        server.smallUploadBytesInUse -= small.free(pool: pool, blocks: server.smallBuffers)
    }

    private func finishSeed(prefix: SeedDigits, size: UInt64) {
        if small.isActive {
            small.pendingFinish = (prefix, size)
            return
        }
        if sink == nil { startSeedSink() }
        guard let sink else { return }
        sink.flush { [self] error in
            if let error {
                storageFailed(error)
                return
            }
            guard !finishCancelled, let written = seedPartial, sink.takeDescriptor() != nil else { return }
            let commit: (Store.SeedPartial) -> Void = { [self] partial in
                seedPartial = partial
                let name = store.nextSeedName()
                store.commitSeed(partial, name: name) { [self] result in
                    switch result {
                    case .success(let stored):
                        seedPartial = nil
                        server.statistics.uploadsStored += 1
                        log(.info, "stored seed upload", metadata: ["name": "\(stored)", "bytes": "\(size)"])
                        server.tally(.stored, .seedTCP)
                        server.emit(server.seedStored(transport: .seedTCP, peer: peerText, size: size, storedName: "\(stored)", startedAt: uploadStartedAt))
                        perform(machine.seedStored())
                    case .failure(let error):
                        storageFailed(error)
                    }
                }
            }
            if prefix.isEmpty {
                commit(written)
            } else {
                // The file began with digits: its first bytes were read as part of the size field.
                store.rewrite(written, prefix: prefix, dataLength: size - UInt64(prefix.count)) { [self] result in
                    switch result {
                    case .success(let rewritten): commit(rewritten)
                    case .failure(let error):
                        seedPartial = nil
                        storageFailed(error)
                    }
                }
            }
        }
    }

    /// Opens (or resumes) the upload through the store; with `refusal`, only an upload stored
    /// before is accepted and anything else gets `refusal`.
    private func openNative(_ header: FileHeader, refusingNewWith refusal: ProtocolError? = nil) {
        store.openNative(header, owner: peer?.hostIdentityBytes ?? [], refusingNewWith: refusal) { [self] result in
            switch result {
            case .success(.stored(let receipt)):
                if closing {
                    store.release(header.uploadID)
                    return
                }
                storedReceipt = receipt
                nativeHeader = header
                log(.debug, "upload was stored before", metadata: ["upload": "\(header.uploadID)", "name": "\(receipt.storedName)"])
                perform(machine.uploadOpened(heldBytes: header.size))
            case .success(.partial(let partial)):
                if closing {
                    store.close(partial.fd, partial.path) { [store] in store.release(header.uploadID) }
                    return
                }
                native = partial
                nativeHeader = header
                let sink = UploadSink(path: partial.path, fs: store.fs, pool: pool, owner: self, startOffset: partial.held, digester: partial.digester)
                self.sink = sink
                sink.opened(partial.fd)
                log(.debug, "upload opened", metadata: ["upload": "\(header.uploadID)", "name": "\(header.name)", "size": "\(header.size)", "held": "\(partial.held)"])
                server.tally(.started, .tcp)
                server.emit(.started(.native(header, transport: .tcp, peer: peerText)))
                perform(machine.uploadOpened(heldBytes: partial.held))
            case .failure(let error):
                guard !closing else { return }
                log(.warning, "upload refused: \(error)", metadata: ["upload": "\(header.uploadID)"])
                perform(machine.uploadOpenFailed(error))
            }
            resumeHeld()
        }
    }

    private func commitNative() {
        if let receipt = storedReceipt, let header = nativeHeader {
            // Stored before (its RESULT was lost, or the client sent it again): nothing to store.
            store.release(header.uploadID)
            clearUpload()
            server.statistics.uploadsAlreadyStored += 1
            log(.info, "upload already stored", metadata: ["upload": "\(header.uploadID)", "name": "\(receipt.storedName)", "bytes": "\(header.size)"])
            perform(machine.uploadCommitted(storedName: receipt.storedName))
            resumeHeld()
            return
        }
        guard let native, let header = nativeHeader, let sink else { preconditionFailure("commit without an upload") }
        guard let fd = sink.takeDescriptor() else { preconditionFailure("commit of a closed partial") }
        let digest = sink.digester!.finish()
        store.commit(fd, partialPath: native.path, metaPath: native.metaPath, name: header.name, receipt: (header, digest)) { [self] result in
            store.release(header.uploadID)
            clearUpload()
            switch result {
            case .success(let stored):
                server.statistics.uploadsStored += 1
                log(.info, "stored upload", metadata: ["upload": "\(header.uploadID)", "name": "\(stored)", "bytes": "\(header.size)"])
                server.tally(.stored, .tcp)
                server.emit(server.nativeStored(header, transport: .tcp, peer: peerText, storedName: stored, digest: digest, startedAt: uploadStartedAt))
                perform(machine.uploadCommitted(storedName: stored))
            case .failure(let error):
                // The partial and its metadata stay: a retry resumes with every byte held.
                log(.error, "cannot store upload: \(error)", metadata: ["upload": "\(header.uploadID)"])
                storageFailed(error)
            }
            resumeHeld()
        }
    }

    private func clearUpload() {
        releaseDisk()
        sink = nil
        native = nil
        nativeHeader = nil
        storedReceipt = nil
    }

    /// Ends the connection: the reply (if any) is written first; the partial is kept (flushed,
    /// resumable) or discarded; the stream is closed and the server forgets the connection.
    func closeConnection(reply: [UInt8]?, reason: ProtocolError?, partial: ConnectionStateMachine.PartialDisposition) {
        guard !closing else { return }
        if let drain {
            // Its work item may be writing the file: close once it has stopped.
            if closeAfterDrain == nil { closeAfterDrain = (reply, reason, partial) }
            drain.cancel()
            return
        }
        releaseDisk()
        if let reason {
            server.statistics.uploadsFailed += (partial == .none ? 0 : 1)
            if partial != .none, server.onEvent != nil {
                let upload = nativeHeader.map { UploadDescription.native($0, transport: .tcp, peer: peerText) }
                    ?? UploadDescription(transport: .seedTCP, peer: peerText, size: seedDeclared)
                server.tally(.failed(code: reason.code), upload.transport)
                server.emit(.failed(upload, reason: reason.description, code: reason.code, resumable: partial == .keep))
            }
            switch reason {
            case .headerTimeout, .idleTimeout, .shuttingDown:
                log(.warning, "connection closed: \(reason)", metadata: ["partial": "\(partial)"])
            case .diskFull:
                log(.error, "upload failed: \(reason)\(failedFile.map { " (\($0))" } ?? "")", metadata: ["partial": "\(partial)"])
            case .unexpectedEndOfStream, .trailingBytes, .storageFailed, .connectionFailed:
                log(.warning, "broken upload: \(reason)\(failedFile.map { " (\($0))" } ?? "")", metadata: ["partial": "\(partial)"])
            case .authenticationFailed:
                server.authenticationFailed(from: peer)
            default:
                log(.warning, "connection refused: \(reason)")
            }
        }
        if let reply { send(reply) }
        closing = true
        finishCancelled = true
        pool.cancelWait(self)
        if let h = held {
            pool.release(h.slab)
            held = nil
            pauses.remove(.heldInput)
        }
        freeSmall()
        if let sink {
            // The descriptor (unless a commit took it) closes after a partial that goes is
            // removed, so no other process claims it half removed.
            let native = self.native, header = nativeHeader, seedPath = self.seedPartial?.path
            sink.finish { [store] fd in
                if let native, let header {
                    if partial == .discard {
                        store.discard(fd, path: native.path, metaPath: native.metaPath)
                        store.release(header.uploadID)
                    } else {
                        store.letGo(header.uploadID, fd: fd, path: native.path, metaPath: native.metaPath, bytes: sink.writeOffset) { store.release(header.uploadID) }
                    }
                    return
                }
                if let seedPath { store.unlinkQuietly(seedPath) } // a seed partial is never resumable
                store.close(fd, sink.path) { if let header { store.release(header.uploadID) } }
            }
        } else if storedReceipt != nil, let header = nativeHeader {
            store.release(header.uploadID)
        }
        // The peer is looked up only for log lines, and not at all once the socket is closed:
        // lines that can follow the close (a small upload stored) need it looked up now.
        if server.logLevel <= .info { _ = logger }
        if server.onEvent != nil { _ = peerText }
        stream.stopReading()
        // uv_close would cancel a queued reply: close once the writes queued so far are done.
        if stream.writeQueueSize > 0 || reply != nil {
            do {
                try stream.shutdown { [self] _ in stream.close { [self] in server.connectionClosed(self) } }
                return
            } catch {}
        }
        stream.close { [self] in server.connectionClosed(self) }
    }

    /// The server's sweep: the lifecycle machine decides whether a timeout ran out.
    override func checkTimeouts(now: UInt64) {
        guard !closing, closeAfterDrain == nil else { return }
        // A drain is woken only once enough bytes wait: bytes that arrived since the last
        // check are the client sending, slowly, not silence.
        if let drain {
            let waiting = drain.waitingBytes
            if waiting > drainWaitingSeen { lifecycle.clientSent(now: now) }
            drainWaitingSeen = waiting
        }
        // While the server withholds reading (no buffer free, input held back), the client
        // cannot be blamed for silence: neither clock runs out then.
        let listening = pauses.contains(.draining) || (stream.isReading && pauses.isDisjoint(with: ReadPauses.serversOwn))
        if case .timeOut(let error) = lifecycle.timerFired(now: now, listening: listening, waitingForClient: machine.isWaitingForClient) {
            server.statistics.connectionsTimedOut += 1
            perform(machine.timedOut(error))
        }
    }

    private func releaseDisk() {
        server.disk.release(diskHold.release())
    }

    /// Graceful shutdown: ends the connection now if no upload is in progress (native clients
    /// get ERROR 22), else once the upload has ended (checked after every action).
    override func shutDownWhenIdle() {
        guard !closing, case .shutDown = lifecycle.serverDraining(uploadInProgress: machine.hasUploadInProgress) else { return }
        perform(machine.shuttingDown())
    }

    /// The drain's deadline has passed: end the connection if its next move is the client's
    /// (a native partial stays resumable); one the server is still storing goes on, and comes
    /// back here after each action.
    override func cutIfWaitingForClient() {
        guard !closing, closeAfterDrain == nil,
              case .cut = lifecycle.drainDeadlinePassed(waitingForClient: machine.isWaitingForClient, uploadInProgress: machine.hasUploadInProgress)
        else { return }
        server.drainCut(currentPartialDisposition)
        abort()
    }

    /// Server shutdown: end the connection now, keeping native partials for resume.
    override func abort() {
        closeConnection(reply: nil, reason: nil, partial: currentPartialDisposition)
    }
}
