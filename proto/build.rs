//! Generates the gRPC code with a vendored protoc, so `cargo build` needs nothing else.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/cirrus.proto");
    tonic_prost_build::configure()
        // Every service encodes into a buffer sized once (see src/codec.rs).
        .codec_path("crate::codec::SizedCodec")
        .bytes(".cirrus.v1.WriteRequest.data")
        .bytes(".cirrus.v1.ReadReply.data")
        .bytes(".cirrus.v1.RaftBytes.payload")
        .compile_protos(&["proto/cirrus.proto"], &["proto"])?;
    Ok(())
}
