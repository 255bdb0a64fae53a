import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.seedProtocol.
@_cdecl("fuzz_seed_protocol_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.seedProtocol, argc, argv)
}
