import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.flags.
@_cdecl("fuzz_flags_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.flags, argc, argv)
}
