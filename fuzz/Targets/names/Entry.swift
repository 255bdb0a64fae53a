import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.names.
@_cdecl("fuzz_names_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.names, argc, argv)
}
