//! The fused attention on burn's Cube backend (wgpu, cuda).

use burn_cubecl::CubeBackend;

use super::FusedAttentionKernel;

/// For now the backend-generic chunked path ([`super::generic`]): correct and memory-saving
/// (one log-sum-exp a row kept), in burn's own CubeCL ops.
impl FusedAttentionKernel for CubeBackend {}
