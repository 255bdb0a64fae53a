// swift-tools-version:6.0
// A peer for bench/run, kept out of the main package so DataStream does not depend on NIO:
// the receiver a Swift developer would write with SwiftNIO instead of DataStream.
import PackageDescription

let package = Package(
    name: "nio-receiver",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "nio-receiver",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: [.unsafeFlags(["-Ounchecked"])]
        ),
    ]
)
