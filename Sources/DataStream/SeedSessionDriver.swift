import DataStreamCore
import Glibc
import Logging
import UV

/// Drives one seed UDP upload: the machine decides, this object appends to the partial file in
/// large writes (two 256 KiB buffers: one filling, one being written) and stores or discards it.
/// Owned by the `UDPReceiver` until it ends.
final class SeedSessionDriver {
    /// Strong: a file operation's callback may run after the receiver dropped this session.
    let receiver: UDPReceiver
    let source: SocketAddress
    private var machine: SeedUDPSession
    private var fd: FileDescriptor?
    /// The upload's file once open (`fd` is its descriptor while this session holds it).
    private var partial: Store.SeedPartial?
    private var path: String { partial?.label ?? "" }
    private var opening = true
    private static let bufferSize = 256 * 1024
    private var filling: UnsafeMutableRawBufferPointer
    private var spare: UnsafeMutableRawBufferPointer
    private var filled = 0
    private var writeInFlight = false
    private var fileOffset: UInt64 = 0
    private var dropped: UInt64 = 0
    private var outcome: SeedUDPSession.Outcome?
    private var failure: String?
    private var ended = false

    var declaredSize: UInt64 { machine.declaredSize }
    /// Its disk reservation was given back (once, when it ended).
    var diskReleased = false

    /// When the session began (monotonic nanoseconds), for events.
    private let createdAt = monotonicNanoseconds()

    init(receiver: UDPReceiver, source: SocketAddress, declaredSize: UInt64, now: UInt64) {
        self.receiver = receiver
        self.source = source
        machine = SeedUDPSession(declaredSize: declaredSize, now: now)
        filling = .allocate(byteCount: Self.bufferSize, alignment: 64)
        spare = .allocate(byteCount: Self.bufferSize, alignment: 64)
    }

    deinit {
        filling.deallocate()
        spare.deallocate()
    }

    func start() {
        receiver.server.logger.debug("udp seed upload started", metadata: ["source": "\(source)", "declared": "\(machine.declaredSize)"])
        receiver.server.tally(.started, .seedUDP)
        receiver.server.emit(.started(.init(transport: .seedUDP, peer: source.description, size: machine.declaredSize)))
        receiver.server.store.openSeedPartial { [self] result in
            opening = false
            switch result {
            case .success(let opened):
                self.fd = opened.fd
                partial = opened
                if ended {
                    receiver.server.store.discardSeed(opened)
                    self.fd = nil
                    return
                }
                pump()
            case .failure(let e):
                failure = e.description
                pump()
            }
        }
        apply(machine.started(), nil)
    }

    /// `mayBeCoalesced`: receive offload is on, so `d` may be several datagrams end to end.
    func datagram(_ d: UnsafeRawBufferPointer, mayBeCoalesced: Bool) {
        let now = UDPReceiver.microseconds()
        if mayBeCoalesced, d.count > 3 {
            let endsWithMarker = UDPWire.isSeedEnd(UnsafeRawBufferPointer(rebasing: d[(d.count - 3)...]))
            apply(machine.coalescedDatagram(count: d.count, endsWithMarker: endsWithMarker, now: now), d)
            return
        }
        apply(machine.datagram(count: d.count, isEndMarker: UDPWire.isSeedEnd(d), now: now), d)
    }

    func tick(now: UInt64) {
        apply(machine.tick(now: now, timeout: receiver.idleTimeoutMicroseconds), nil)
    }

    func shutdown() { apply(machine.shutdown(), nil) }

    private func apply(_ action: SeedUDPSession.Action, _ d: UnsafeRawBufferPointer?) {
        switch action {
        case .none:
            return
        case .append(let n):
            if n > 0, let d { append(UnsafeRawBufferPointer(rebasing: d[0..<n])) }
        case .appendAndFinish(let n, let outcome):
            if n > 0, let d { append(UnsafeRawBufferPointer(rebasing: d[0..<n])) }
            self.outcome = outcome
            receiver.seedSessionEnded(self)
            pump(force: true)
        }
    }

    private func append(_ bytes: UnsafeRawBufferPointer) {
        receiver.server.metrics.received(bytes.count, .seedUDP)
        if filled + bytes.count > filling.count {
            pump(force: true)
            if filled + bytes.count > filling.count {
                // Both buffers are in use (the disk is slower than the datagrams): the bytes are
                // lost, exactly as if the network had dropped them; the session cannot complete.
                dropped += UInt64(bytes.count)
                return
            }
        }
        UnsafeMutableRawBufferPointer(rebasing: filling[filled...]).copyMemory(from: bytes)
        filled += bytes.count
        if filled >= Self.bufferSize / 2 { pump() }
    }

    /// Writes the filling buffer when it is worth it (or `force`), and ends the session when all is written.
    private func pump(force: Bool = false) {
        guard !opening, !writeInFlight else { return }
        let store = receiver.server.store
        if let failure, !ended {
            finishSession(stored: nil, reason: failure)
            return
        }
        guard let fd else { return }
        if filled > 0, force || filled >= Self.bufferSize / 2 || outcome != nil {
            let buffer = filling
            let count = filled
            swap(&filling, &spare)
            filled = 0
            writeInFlight = true
            let offset = fileOffset
            do throws(UVOperationError) {
                try store.fs.write(fd, buffers: CollectionOfOne(UnsafeRawBufferPointer(rebasing: buffer[0..<count])), offset: Int64(offset), target: path) { [self] r in
                    writeInFlight = false
                    switch r {
                    case .success(let n) where n == count:
                        fileOffset += UInt64(n)
                    case .success(let n):
                        failure = "short write of \(n) of \(count) bytes"
                    case .failure(let e):
                        failure = e.description
                    }
                    pump()
                }
            } catch {
                writeInFlight = false
                failure = error.description
                pump()
            }
            return
        }
        guard let outcome, !ended, filled == 0 else { return }
        switch outcome {
        case .complete where dropped == 0:
            guard let partial else { return }
            ended = true
            self.fd = nil
            let name = store.nextSeedName()
            store.commitSeed(partial, name: name) { [self] r in
                switch r {
                case .success(let stored): finishSession(stored: stored, reason: nil)
                case .failure(let e):
                    if let path = partial.path { store.unlinkQuietly(path) }
                    finishSession(stored: nil, reason: e.description)
                }
            }
        case .complete:
            finishSession(stored: nil, reason: "\(dropped) bytes dropped: the disk fell behind")
        case .incomplete(let missing, let reason):
            finishSession(stored: nil, reason: "\(missing) of \(machine.declaredSize) bytes missing at \(reason.rawValue)")
        case .overflow(let extra):
            finishSession(stored: nil, reason: "\(extra) bytes more than the declared \(machine.declaredSize)")
        }
    }

    private func finishSession(stored: String?, reason: String?) {
        ended = true
        let server = receiver.server
        if fd != nil, let partial {
            self.fd = nil
            server.store.discardSeed(partial)
        }
        if let stored {
            server.statistics.uploadsStored += 1
            server.logger.info("stored udp seed upload", metadata: ["name": "\(stored)", "bytes": "\(machine.declaredSize)", "source": "\(source)"])
            server.tally(.stored, .seedUDP)
            server.emit(server.seedStored(transport: .seedUDP, peer: source.description, size: machine.declaredSize, storedName: stored, startedAt: createdAt))
        } else {
            server.statistics.uploadsFailed += 1
            server.logger.warning("broken udp seed upload: \(reason ?? "?")", metadata: ["source": "\(source)"])
            server.tally(.failed(code: ProtocolError.unexpectedEndOfStream(received: 0, expected: 0).code), .seedUDP)
            server.emit(.failed(.init(transport: .seedUDP, peer: source.description, size: machine.declaredSize),
                                reason: reason ?? "broken upload", code: ProtocolError.unexpectedEndOfStream(received: 0, expected: 0).code, resumable: false))
        }
        receiver.seedSessionEnded(self)
        // finishSession runs once, with no open, write or commit in flight.
        receiver.sessionRetired()
    }
}
