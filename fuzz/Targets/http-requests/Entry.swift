import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.httpRequests.
@_cdecl("fuzz_http_requests_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.httpRequests, argc, argv)
}
