//! One cfg for "a CubeCL backend is compiled in": `memtrain_cube`, set by the `wgpu` or `cuda`
//! feature, so that the kernels and routes for burn's Cube backend are gated in one word.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(memtrain_cube)");
    if std::env::var_os("CARGO_FEATURE_WGPU").is_some()
        || std::env::var_os("CARGO_FEATURE_CUDA").is_some()
    {
        println!("cargo::rustc-cfg=memtrain_cube");
    }
}
