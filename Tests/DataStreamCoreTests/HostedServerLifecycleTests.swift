import DataStreamCore
import Testing

/// The C API's handle rules, transition by transition.
struct HostedServerLifecycleTests {
    @Test func startOnceThenStopThenFree() {
        var l = HostedServerLifecycle()
        #expect(l.free() == nil, "a server never started may be freed")
        #expect(l.start() == nil)
        #expect(l.isRunning)
        #expect(l.start() == .alreadyStarted)
        #expect(l.free() == .stillRunning)
        #expect(l.stop() == .success(.stopServer))
        #expect(!l.isRunning)
        #expect(l.free() == .stillRunning, "not before the stop's callback")
        #expect(l.stop() == .failure(.alreadyStopping))
        l.stopped()
        #expect(l.free() == nil)
        #expect(l.start() == .alreadyStopping)
        #expect(l.stop() == .failure(.alreadyStopping))
    }

    @Test func aFailedStartMayBeRetriedOrFreed() {
        var l = HostedServerLifecycle()
        #expect(l.start() == nil)
        l.startFailed()
        #expect(l.free() == nil)
        #expect(l.start() == nil, "a start that opened nothing may be tried again")
    }

    @Test func stopBeforeStartCallsBackAtOnce() {
        var l = HostedServerLifecycle()
        #expect(l.stop() == .success(.callBackNow))
        #expect(l.free() == nil)
        #expect(l.start() == .alreadyStopping)
    }
}
