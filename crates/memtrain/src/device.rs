//! Devices: choosing one by name (`cpu`, `wgpu`, `cuda[:N]`), and which of memtrain's kernels
//! run on it.
//!
//! | device | backend | memtrain's custom ops | meter |
//! |---|---|---|---|
//! | `cpu` | burn's Flex | slice kernels (`flex.rs` files) | the counting allocator |
//! | `wgpu` (feature `wgpu`) | burn's Cube on wgpu (Vulkan, Metal, DX12; Mesa's lavapipe in CI) | CubeCL kernels (`cube.rs` files) | the device's memory pool |
//! | `cuda[:N]` (feature `cuda`) | burn's Cube on CUDA | CubeCL kernels (`cube.rs` files) | the device's memory pool |
//! | anything else (e.g. `ndarray`) | its own | burn's own ops: correct, no saving | the counting allocator |
//!
//! ```
//! use memtrain::device::{Kernels, kernels, parse_device};
//! let cpu = parse_device("cpu").unwrap();
//! assert_eq!(kernels(&cpu), Kernels::Flex);
//! let e = parse_device("tpu").unwrap_err().to_string();
//! assert!(e.contains("tpu") && e.contains("cpu"), "{e}");
//! ```

use burn::tensor::Device;

use crate::error::{Error, Result};

/// Which of memtrain's kernels a device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The slice kernels for burn's Flex CPU backend.
    Flex,
    /// The CubeCL kernels for burn's Cube backend (wgpu, cuda).
    Cube,
    /// None: burn's own ops.
    None,
}

/// The kernels tensors on `device` (with or without autodiff) run.
pub fn kernels(device: &Device) -> Kernels {
    #[allow(unreachable_patterns)]
    match device.clone().without_autodiff().as_dispatch() {
        burn::backend::DispatchDevice::Flex(_) => Kernels::Flex,
        #[cfg(memtrain_cube)]
        burn::backend::DispatchDevice::Cube(_) => Kernels::Cube,
        _ => Kernels::None,
    }
}

/// The device names this build accepts.
pub fn choices() -> &'static str {
    match (cfg!(feature = "wgpu"), cfg!(feature = "cuda")) {
        (true, true) => "cpu, wgpu, wgpu:cpu, cuda, cuda:N",
        (true, false) => "cpu, wgpu, wgpu:cpu (cuda needs a build with --features cuda)",
        (false, true) => "cpu, cuda, cuda:N (wgpu needs a build with --features wgpu)",
        (false, false) => "cpu (wgpu and cuda need a build with --features wgpu or cuda)",
    }
}

/// The device `name` says (without autodiff): `cpu` (burn's Flex), `wgpu` (the default wgpu
/// adapter), `wgpu:cpu` (a software adapter such as Mesa's lavapipe), `cuda` or `cuda:N`.
///
/// # Errors
///
/// [`Error::Config`] naming `device` and this build's [`choices`] for an unknown name, or a
/// backend this build was compiled without.
pub fn parse_device(name: &str) -> Result<Device> {
    let bad = || Error::config("device", name, format!("one of {}", choices()));
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (k, Some(i)),
        None => (name, None),
    };
    match (kind, index) {
        ("cpu", None) => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        ("wgpu", None) => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "wgpu")]
        ("wgpu", Some("cpu")) => Ok(Device::wgpu(burn::tensor::DeviceKind::Cpu)),
        #[cfg(feature = "cuda")]
        ("cuda", None) => Ok(Device::cuda(0)),
        #[cfg(feature = "cuda")]
        ("cuda", Some(i)) => i.parse::<usize>().map(Device::cuda).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// Waits until `device` has run everything queued on it: timings of a device that runs
/// asynchronously (wgpu, cuda) are only meaningful after this. Nothing to wait for on the CPU.
///
/// # Errors
///
/// [`Error::Device`] when the device reports an execution error.
pub fn sync(device: &Device) -> Result<()> {
    if kernels(device) != Kernels::Cube {
        return Ok(());
    }
    device.sync().map_err(|e| Error::Device {
        reason: format!("{e:?}"),
    })
}
