import FuzzDriver

/// The executable's entry point (see runFuzzer): fuzzes FuzzTarget.nativeFrames.
@_cdecl("fuzz_native_frames_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(.nativeFrames, argc, argv)
}
