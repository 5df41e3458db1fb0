// Dropout with a one-byte mask drawn from a counter-based hash, for the CPU. LibTorch 1.13's CPU
// dropout draws each element's Bernoulli variable from the generator one at a time and keeps a
// float32 mask: in a Transformer training step of configs/kjv-transformer-switch.toml its
// bernoulli_ took 24.5 of 302 ms (profile). Here one 64-bit draw of LibTorch's default CPU
// generator seeds splitmix64 at each element's index (four 16-bit uniforms per hash), so the mask is
// the same whatever the thread count, a run resumed from a checkpoint (which saves the generator)
// draws what it would have drawn, and the backward keeps one byte per element.
//
// Off the CPU, LibTorch's dropout (fused there).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>

namespace moelab {

// While `training`, x with each element zeroed with probability p (rounded to a multiple of 2^-16)
// and the others scaled by the inverse of the probability of keeping it; x itself otherwise or when
// p = 0. p outside [0, 1] is refused with moelab::Error.
torch::Tensor dropout(const torch::Tensor& x, double p, bool training);

// The mask of a call seeded with `seed` (1 = keep), [numel] uint8, and its twin computed element by
// element with the hash spelled out (the test oracle).
torch::Tensor dropout_mask(int64_t numel, double p, uint64_t seed);
torch::Tensor dropout_mask_reference(int64_t numel, double p, uint64_t seed);

// A module holding p, drop-in for torch::nn::Dropout (no parameters, no buffers: checkpoints of
// either load into the other).
class DropoutImpl : public torch::nn::Module {
 public:
  explicit DropoutImpl(double p = 0.5);
  torch::Tensor forward(const torch::Tensor& x);
  double p;
};
TORCH_MODULE(Dropout);

}  // namespace moelab
