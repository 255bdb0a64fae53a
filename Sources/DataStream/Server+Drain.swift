import DataStreamCore
import UV

extension Server {
    /// What a graceful shutdown (`drain`) came to.
    public struct DrainOutcome: Sendable, Equatable {
        /// Connections with an upload in progress when the drain began.
        public var inProgressAtStart = 0
        /// Uploads stored while draining.
        public var storedWhileDraining: UInt64 = 0
        /// Uploads still in progress at the deadline, cut then: native ones keep their partial
        /// (the client resumes), seed ones are deleted (the seed protocol cannot resume).
        public var cutResumable = 0
        public var cutLost = 0
        /// Whether every upload ended before the deadline.
        public var completedInTime: Bool { cutResumable == 0 && cutLost == 0 }
    }


    /// Graceful shutdown (SIGTERM/SIGINT): stops accepting at once, closes connections that
    /// have no upload in progress (native clients get ERROR 22), lets uploads in progress finish
    /// for up to `deadline` seconds (timeouts still apply; UDP uploads in progress too, new UDP
    /// sessions are refused), then cuts what is left as `stop` does (native partials stay
    /// resumable) and closes everything, UDP included. `completion`
    /// runs once every handle is closed, with what happened.
    public func drain(deadline: Double, _ completion: @escaping (DrainOutcome) -> Void) {
        guard !isDraining else { return }
        isDraining = true
        drainCompletion = completion
        drainStoredAtStart = statistics.uploadsStored
        drainOutcome.inProgressAtStart = connections.filter(\.hasUploadInProgress).count + (udp?.uploadsInProgress ?? 0)
        descriptorRetryTimer?.close()
        descriptorRetryTimer = nil
        if let listener {
            self.listener = nil
            listenerClosed = false
            listener.close { [self] in
                listenerClosed = true
                finishStopIfDone()
            }
        }
        logger.notice("draining: \(drainOutcome.inProgressAtStart) uploads in progress may finish within \(deadline) s")
        for connection in connections { connection.shutDownWhenIdle() }
        do throws(UVOperationError) {
            let t = try Timer(loop: loop)
            drainTimer = t
            try t.start(timeout: TimeLimit.units(deadline, perSecond: 1000) ?? 0) { [unowned self] in endDrain() }
        } catch {
            logger.error("cannot arm the drain deadline: \(error); stopping now")
            endDrain()
        }
        if drainIsOver { endDrain() }
    }

    /// Every TCP connection closed and every UDP upload ended.
    var drainIsOver: Bool { connections.isEmpty && (udp?.uploadsInProgress ?? 0) == 0 }

    /// A UDP upload ended (stored, failed or timed out): the drain may be over.
    func udpUploadEnded() {
        if isDraining, drainIsOver { endDrain() }
    }

    /// The drain's deadline, or its last connection gone: cut what is left and stop.
    func endDrain() {
        guard let completion = drainCompletion else { return }
        if !drainDeadlinePassed {
            drainDeadlinePassed = true
            drainTimer?.close()
            drainTimer = nil
            drainOutcome.cutResumable += udp?.nativeUploadsInProgress ?? 0
            drainOutcome.cutLost += udp?.seedUploadsInProgress ?? 0
            // Cut what waits on its client; what the server is still storing (the client has
            // sent everything) finishes, answers and closes by itself.
            for connection in connections { connection.cutIfWaitingForClient() }
        }
        guard connections.isEmpty else { return }  // connectionClosed calls again
        drainCompletion = nil
        stop { [self] in
            drainOutcome.storedWhileDraining = statistics.uploadsStored - drainStoredAtStart
            completion(drainOutcome)
        }
    }


    /// A connection cut at the drain's deadline, with what became of its upload.
    func drainCut(_ partial: ConnectionStateMachine.PartialDisposition) {
        switch partial {
        case .keep: drainOutcome.cutResumable += 1
        case .discard: drainOutcome.cutLost += 1
        case .none: break
        }
    }
}
