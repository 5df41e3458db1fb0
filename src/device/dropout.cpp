#include "moelab/device/dropout.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <mutex>

#include "moelab/util/error.h"
#include "moelab/util/mix64.h"

namespace moelab {

namespace {

constexpr double kLevels = 65536.0;  // a mask decision compares one 16-bit uniform

// Elements whose 16-bit uniform is below this are dropped.
uint32_t drop_threshold(double p) { return static_cast<uint32_t>(std::llround(p * kLevels)); }

// The probability of keeping an element, exactly as the mask realises it.
double keep_probability(double p) { return (kLevels - drop_threshold(p)) / kLevels; }

// Element i's 16-bit uniform: lane i % 4 of splitmix64's (i / 4)-th output for this seed.
inline uint32_t element_uniform(uint64_t seed, int64_t i) {
  const uint64_t hash = mix64(seed + static_cast<uint64_t>(i / 4) * 0x9e3779b97f4a7c15ULL);
  return static_cast<uint32_t>((hash >> (16 * (i % 4))) & 0xffffu);
}

// y = x * mask * scale in one pass, any floating type (arithmetic in float, double in double).
torch::Tensor masked_scale(const torch::Tensor& x, const torch::Tensor& mask, double scale) {
  const auto input = x.contiguous();
  auto out = torch::empty_like(input);
  const uint8_t* m = mask.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "moelab_dropout", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* in = input.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const acc_t s = static_cast<acc_t>(scale);
    at::parallel_for(0, input.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        o[i] = static_cast<scalar_t>(static_cast<acc_t>(in[i]) * (m[i] ? s : acc_t(0)));
    });
  });
  return out;
}

struct DropoutFunction : public torch::autograd::Function<DropoutFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& mask,
                               double scale) {
    ctx->save_for_backward({mask});
    ctx->saved_data["scale"] = scale;
    return masked_scale(x, mask, scale);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto mask = ctx->get_saved_variables()[0];
    return {masked_scale(grad_outputs[0], mask, ctx->saved_data["scale"].toDouble()), torch::Tensor(),
            torch::Tensor()};
  }
};

uint64_t draw_seed() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get<at::CPUGeneratorImpl>()->random64();
}

void check_probability(double p) {
  if (!(p >= 0.0 && p <= 1.0)) fail("dropout probability must be in [0, 1], got {}", p);
}

}  // namespace

torch::Tensor dropout_mask(int64_t numel, double p, uint64_t seed) {
  check_probability(p);
  auto mask = torch::empty({numel}, torch::kUInt8);
  uint8_t* m = mask.data_ptr<uint8_t>();
  const uint32_t threshold = drop_threshold(p);
  // Whole hashes per chunk: chunks start at multiples of 4.
  at::parallel_for(0, (numel + 3) / 4, 1 << 12, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const uint64_t hash = mix64(seed + static_cast<uint64_t>(j) * 0x9e3779b97f4a7c15ULL);
      for (int64_t lane = 0; lane < 4 && 4 * j + lane < numel; ++lane)
        m[4 * j + lane] = ((hash >> (16 * lane)) & 0xffffu) >= threshold;
    }
  });
  return mask;
}

torch::Tensor dropout_mask_reference(int64_t numel, double p, uint64_t seed) {
  check_probability(p);
  auto mask = torch::empty({numel}, torch::kUInt8);
  for (int64_t i = 0; i < numel; ++i) mask[i] = element_uniform(seed, i) >= drop_threshold(p) ? 1 : 0;
  return mask;
}

torch::Tensor dropout(const torch::Tensor& x, double p, bool training) {
  check_probability(p);
  if (!training || p == 0.0) return x;
  if (!x.device().is_cpu() || !at::isFloatingType(x.scalar_type())) return torch::dropout(x, p, /*train=*/true);
  const double keep = keep_probability(p);
  const auto mask = dropout_mask(x.numel(), p, draw_seed()).view(x.sizes());
  return DropoutFunction::apply(x, mask, keep > 0.0 ? 1.0 / keep : 0.0);
}

DropoutImpl::DropoutImpl(double p_) : p(p_) { check_probability(p); }

torch::Tensor DropoutImpl::forward(const torch::Tensor& x) { return moelab::dropout(x, p, is_training()); }

}  // namespace moelab
