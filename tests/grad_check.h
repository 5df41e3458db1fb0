// Finite-difference gradient checking in double precision: the independent reference every
// hand-written backward (and every loss whose gradient we rely on) is compared with.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace moelab::testing {

struct GradCheckOptions {
  double step = 1e-6;           // central-difference step
  double tolerance = 1e-5;      // |analytic - numeric| <= tolerance * max(1, |analytic|, |numeric|)
  int64_t max_entries = 200;    // checked entries per tensor (evenly spaced), to bound the cost
};

// loss(): recomputes a scalar from the current values of `inputs` (leaf double tensors with
// requires_grad). Must be deterministic (re-seed inside if it draws random numbers).
inline void expect_gradients_match(const std::function<torch::Tensor()>& loss,
                                   const std::vector<std::pair<std::string, torch::Tensor>>& inputs,
                                   const GradCheckOptions& options = {}) {
  std::vector<torch::Tensor> leaves;
  for (const auto& [name, t] : inputs) {
    ASSERT_EQ(t.scalar_type(), torch::kDouble) << name << " must be double for a gradient check";
    ASSERT_TRUE(t.requires_grad()) << name;
    leaves.push_back(t);
  }
  const auto value = loss();
  const auto grads = torch::autograd::grad({value}, leaves, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                           /*create_graph=*/false, /*allow_unused=*/true);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& [name, tensor] = inputs[i];
    auto flat = tensor.view({-1});
    const auto analytic = grads[i].defined() ? grads[i].reshape({-1}) : torch::zeros_like(flat);
    const int64_t n = flat.numel();
    const int64_t stride = std::max<int64_t>(1, n / options.max_entries);
    int64_t checked = 0;
    for (int64_t j = 0; j < n; j += stride, ++checked) {
      const double original = flat[j].item<double>();
      flat[j] = original + options.step;
      const double plus = loss().item<double>();
      flat[j] = original - options.step;
      const double minus = loss().item<double>();
      flat[j] = original;
      const double numeric = (plus - minus) / (2 * options.step);
      const double a = analytic[j].item<double>();
      const double scale = std::max({1.0, std::abs(a), std::abs(numeric)});
      ASSERT_LE(std::abs(a - numeric), options.tolerance * scale)
          << name << "[" << j << "]: analytic " << a << " vs finite difference " << numeric;
    }
    EXPECT_GT(checked, 0) << name;
  }
}

}  // namespace moelab::testing
