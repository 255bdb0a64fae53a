import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.multipart.
@_cdecl("fuzz_multipart_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.multipart, argc, argv)
}
