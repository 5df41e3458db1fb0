#include "moelab/train/factored_optimizer.h"

#include <torch/torch.h>

#include "moelab/train/optimizer_state_key.h"
#include "moelab/train/param_group_options.h"
#include "moelab/util/error.h"

namespace moelab {

void FactoredOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(beta2);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(eps);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(expert_stacked);
}

void FactoredOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, beta2);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, eps);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, expert_stacked);
}

void FactoredParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(row);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(col);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(full);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(steps);
}

void FactoredParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, row);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, col);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, full);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, steps);
}

namespace {

// Whether a tensor's (per-expert slice's) second moment is factored: it is at least a matrix.
bool is_factored(const torch::Tensor& param, bool expert_stacked) {
  return param.dim() - (expert_stacked ? 1 : 0) >= 2;
}

// One update of weights w with gradient g and their state, all already narrowed to the slices
// being updated (for expert groups: the experts that received tokens, along dim 0).
void update(torch::Tensor& w, const torch::Tensor& g, torch::Tensor& row, torch::Tensor& col, torch::Tensor& full,
            torch::Tensor& steps, const FactoredOptions& o, bool expert_stacked) {
  const double b2 = o.beta2();
  steps.add_(1);
  const auto squared = g * g + 1e-30;  // keeps mean(R) > 0 for an all-zero gradient row
  torch::Tensor second;
  if (row.defined()) {
    row.mul_(b2).add_(squared.mean(-1), 1 - b2);
    col.mul_(b2).add_(squared.mean(-2), 1 - b2);
    second = row.unsqueeze(-1) * col.unsqueeze(-2) / row.mean(-1, /*keepdim=*/true).unsqueeze(-1);
  } else {
    full.mul_(b2).add_(squared, 1 - b2);
    second = full;
  }
  auto correction = 1 - torch::pow(b2, steps).to(w.scalar_type());  // [E'] or [1]
  if (expert_stacked) {
    std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
    shape[0] = correction.size(0);
    correction = correction.view(shape);
  }
  w.add_(g / ((second / correction).sqrt() + o.eps()), -o.lr());
}

}  // namespace

FactoredOptimizer::FactoredOptimizer(std::vector<torch::optim::OptimizerParamGroup> groups, FactoredOptions defaults)
    : Optimizer(groups, std::make_unique<FactoredOptions>(defaults)) {
  keep_group_options(*this, groups);  // LibTorch 2.x would give every group the defaults
  if (defaults.lr() < 0) fail("train.lr must be >= 0 for the factored optimizer, got {}", defaults.lr());
  if (defaults.beta2() <= 0 || defaults.beta2() >= 1) fail("factored optimizer: beta2 must be in (0, 1)");
}

FactoredParamState& FactoredOptimizer::state_of(const torch::Tensor& p, bool expert_stacked) {
  const auto key = optimizer_state_key(p);
  auto found = state_.find(key);
  if (found == state_.end()) {
    auto state = std::make_unique<FactoredParamState>();
    const auto options = p.options().requires_grad(false);
    if (is_factored(p, expert_stacked)) {
      const auto sizes = p.sizes().vec();
      std::vector<int64_t> row_shape(sizes.begin(), sizes.end() - 1);
      std::vector<int64_t> col_shape(sizes.begin(), sizes.end() - 2);
      col_shape.push_back(sizes.back());
      state->row(torch::zeros(row_shape, options));
      state->col(torch::zeros(col_shape, options));
    } else {
      state->full(torch::zeros_like(p, options));
    }
    state->steps(torch::zeros({expert_stacked ? p.size(0) : 1}, options.dtype(torch::kDouble)));
    found = state_.emplace(key, std::move(state)).first;
  }
  return static_cast<FactoredParamState&>(*found->second);
}

torch::Tensor FactoredOptimizer::step(LossClosure closure) {
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  torch::NoGradGuard no_grad;
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const FactoredOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& state = state_of(p, o.expert_stacked());
      auto row = state.row(), col = state.col(), full = state.full(), steps = state.steps();
      auto with_decay = [&](const torch::Tensor& g, const torch::Tensor& w) {
        return o.weight_decay() != 0 ? g + o.weight_decay() * w : g;
      };
      if (!o.expert_stacked()) {
        auto w = p.detach();
        update(w, with_decay(p.grad(), w), row, col, full, steps, o, false);
        continue;
      }
      // Lazy: only the experts whose gradient slice is not all zero. The test reads the loss's own
      // gradient: weight decay would make every expert look active and decay the idle ones too.
      const auto active = p.grad().reshape({p.size(0), -1}).ne(0).any(1).nonzero().squeeze(1);
      const auto grad = with_decay(p.grad(), p.detach());
      if (active.numel() == 0) continue;
      if (active.numel() == p.size(0)) {
        auto w = p.detach();
        update(w, grad, row, col, full, steps, o, true);
        continue;
      }
      auto pick = [&](const torch::Tensor& t) { return t.defined() ? t.index_select(0, active) : t; };
      auto w = pick(p.detach()), r = pick(row), c = pick(col), f = pick(full), s = pick(steps);
      update(w, pick(grad), r, c, f, s, o, true);
      p.detach().index_copy_(0, active, w);
      for (auto [target, value] : {std::pair{row, r}, std::pair{col, c}, std::pair{full, f}, std::pair{steps, s}})
        if (target.defined()) target.index_copy_(0, active, value);
    }
  }
  return loss;
}

int64_t FactoredOptimizer::state_numel(const torch::Tensor& p) const {
  const auto found = state_.find(optimizer_state_key(p));
  if (found == state_.end()) return 0;
  const auto& s = static_cast<const FactoredParamState&>(*found->second);
  int64_t total = 0;
  for (const auto& t : {s.row(), s.col(), s.full()})
    if (t.defined()) total += t.numel();
  return total;
}

void FactoredOptimizer::save(torch::serialize::OutputArchive& archive) const { serialize(*this, archive); }

void FactoredOptimizer::load(torch::serialize::InputArchive& archive) { serialize(*this, archive); }

}  // namespace moelab
