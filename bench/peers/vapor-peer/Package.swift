// swift-tools-version:6.0
// Vapor as a peer for bench/http, kept out of the main package so DataStream does not depend on
// it: the receiver a Swift developer would write with Vapor instead of DataStream.
import PackageDescription

let package = Package(
    name: "vapor-receiver",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(url: "https://github.com/vapor/vapor", exact: "4.122.3"),
    ],
    targets: [
        .executableTarget(
            name: "vapor-receiver",
            dependencies: [.product(name: "Vapor", package: "vapor")]
        ),
    ]
)
