import CLibUV
import Glibc

/// A worker process that must not outlive the process that started it. libuv has no such call;
/// this is `prctl(PR_SET_PDEATHSIG)` (Linux).
public enum ParentDeath {
    /// Asks the kernel to send `signal` to this process when its parent ends. Returns false if
    /// the parent has already ended (this process was adopted by another), which the caller
    /// treats as that signal.
    public static func signalOnParentDeath(_ signal: Int32, expectedParent: pid_t) -> Bool {
        _ = datastream_parent_death_signal(signal)
        return getppid() == expectedParent
    }
}
