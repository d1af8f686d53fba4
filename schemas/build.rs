//! Compiles the `.proto` files with `protox` (a protobuf compiler written in
//! Rust), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/sysmonstm/v1/snapshot.proto",
        "proto/sysmonstm/v1/machine.proto",
        "proto/sysmonstm/v1/alert.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // Serialize lets `sysmonstm-agent --once --json` print what it sees.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
