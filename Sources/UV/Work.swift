import CLibUV
import Glibc

extension Loop {
    /// Runs `work` on libuv's threadpool, then `after` on the loop's thread. For a short sequence
    /// of blocking file calls (`BlockingFileSystem`) that would otherwise cost one threadpool
    /// round trip each. `work` must not touch the loop or any handle. The libuv function is
    /// `uv_queue_work`; the request owns both closures until `after` has run.
    public func queueWork(_ work: @escaping @Sendable () -> Void, after: @escaping () -> Void) throws(UVOperationError) {
        let context = WorkContext(work: work, after: after, loop: self)
        let req = UnsafeMutablePointer<uv_work_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passRetained(context).toOpaque()
        let status = uv_queue_work(uv, req, workRun, workDone)
        if status < 0 {
            Unmanaged<WorkContext>.fromOpaque(req.pointee.data!).release()
            req.deallocate()
            throw UVOperationError("queue_work", code: status)
        }
        threadpoolRequestsInFlight += 1
    }
}

private final class WorkContext: @unchecked Sendable {
    let work: @Sendable () -> Void
    let after: () -> Void
    /// Read on the loop's thread only (in `workDone`).
    unowned(unsafe) let loop: Loop
    init(work: @escaping @Sendable () -> Void, after: @escaping () -> Void, loop: Loop) {
        self.work = work
        self.after = after
        self.loop = loop
    }
}

private func workRun(_ req: UnsafeMutablePointer<uv_work_t>?) {
    guard let req else { return }
    Unmanaged<WorkContext>.fromOpaque(req.pointee.data!).takeUnretainedValue().work()
}

private func workDone(_ req: UnsafeMutablePointer<uv_work_t>?, _ status: Int32) {
    guard let req else { return }
    let context = Unmanaged<WorkContext>.fromOpaque(req.pointee.data!).takeRetainedValue()
    req.deallocate()
    context.loop.threadpoolRequestsInFlight -= 1
    // Work is never cancelled here, so status is 0; `after` runs either way.
    context.after()
}
