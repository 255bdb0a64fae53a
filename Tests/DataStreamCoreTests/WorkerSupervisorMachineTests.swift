import DataStreamCore
import Testing

/// `serve --workers`'s supervisor, transition by transition (time passed in).
struct WorkerSupervisorMachineTests {
    typealias M = WorkerSupervisorMachine

    @Test func readyOnceEveryWorkerListens() {
        var m = M(workers: 3)
        #expect(m.begin(now: 0) == [.start(worker: 0), .start(worker: 1), .start(worker: 2)])
        #expect(m.begin(now: 0) == [], "once")
        #expect(m.listening(1, now: 0.1) == [])
        #expect(m.listening(1, now: 0.1) == [], "a second line from one worker changes nothing")
        #expect(m.listening(0, now: 0.2) == [])
        #expect(!m.isReady)
        #expect(m.listening(2, now: 0.3) == [.ready])
        #expect(m.isReady)
    }

    @Test func aWorkerThatCannotStartStopsTheOthersAndFailsTheServer() {
        var m = M(workers: 3)
        _ = m.begin(now: 0)
        _ = m.listening(0, now: 0.1)
        #expect(m.exited(1, status: 1, signal: 0, now: 0.2) == [.signal(worker: 0, signal: M.SIGTERM), .signal(worker: 2, signal: M.SIGTERM)])
        #expect(m.exited(0, status: 0, signal: 0, now: 0.3) == [])
        #expect(m.exited(2, status: 0, signal: 0, now: 0.4) == [.exit(status: 1, reason: "worker 1 exited with status 1 before it listened")])
    }

    @Test func aDeadWorkerIsRestartedAtMostOncePerDelay() {
        var m = M(workers: 2, restartDelay: 1)
        _ = m.begin(now: 0)
        _ = m.listening(0, now: 0.1)
        _ = m.listening(1, now: 0.1)
        // Ran 5 s: started again at once.
        #expect(m.exited(0, status: 0, signal: 9, now: 5) == [.start(worker: 0)])
        #expect(m.restarts == [1, 0])
        #expect(m.listening(0, now: 5.1) == [], "ready already: no second ready")
        // Died 0.25 s after that start: waits until a second after it.
        #expect(m.exited(0, status: 1, signal: 0, now: 5.25) == [.restartAt(worker: 0, at: 6)])
        #expect(m.restartDue(0, now: 6) == [.start(worker: 0)])
        #expect(m.restartDue(0, now: 6.5) == [], "only while waiting")
        #expect(m.restarts == [2, 0])
    }

    @Test func aStopDrainsEveryWorkerAndExitsWhenAllEnded() {
        var m = M(workers: 2)
        _ = m.begin(now: 0)
        _ = m.listening(0, now: 0.1)
        _ = m.listening(1, now: 0.1)
        #expect(m.exited(1, status: 0, signal: 9, now: 0.5) == [.restartAt(worker: 1, at: 1)])
        // Stop while worker 1 waits for its restart: it is not started again.
        #expect(m.stopRequested(signal: M.SIGINT) == [.signal(worker: 0, signal: M.SIGTERM)])
        #expect(m.restartDue(1, now: 1) == [])
        // A second signal is passed on as it came.
        #expect(m.stopRequested(signal: M.SIGINT) == [.signal(worker: 0, signal: M.SIGINT)])
        #expect(m.exited(0, status: 0, signal: 0, now: 2) == [.exit(status: 0, reason: nil)])
        #expect(m.exited(0, status: 0, signal: 0, now: 2) == [], "ended")
    }

    @Test func aStopBeforeEveryWorkerListensStillDrainsAndExitsCleanly() {
        var m = M(workers: 2)
        _ = m.begin(now: 0)
        #expect(m.stopRequested(signal: M.SIGTERM) == [.signal(worker: 0, signal: M.SIGTERM), .signal(worker: 1, signal: M.SIGTERM)])
        #expect(m.listening(0, now: 0.1) == [], "not ready while stopping")
        #expect(m.exited(0, status: 0, signal: 0, now: 0.2) == [])
        #expect(m.exited(1, status: 0, signal: 0, now: 0.3) == [.exit(status: 0, reason: nil)])
    }
}

struct WorkerCommandLineTests {
    @Test func theWorkerGetsTheSupervisorsOptionsLessWhatItDecides() {
        let original = ["serve", "--workers", "2", "--dir", "/srv/in", "--port=0", "--token", "s3", "--udp-port", "9001", "--fsync"]
        #expect(WorkerCommandLine.arguments(from: original, port: 41000, udpPort: 41001, slot: 1)
                == ["serve", "--dir", "/srv/in", "--token", "s3", "--fsync", "--port", "41000", "--worker-slot", "1", "--udp-port", "41001"])
        #expect(WorkerCommandLine.arguments(from: ["serve", "--workers=auto", "--no-udp"], port: 7, udpPort: nil, slot: 0)
                == ["serve", "--no-udp", "--port", "7", "--worker-slot", "0"])
    }
}
