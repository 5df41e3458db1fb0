#include "moelab/train/gradient_sync.h"

#include <cmath>

namespace moelab {

ParameterPlacement place_parameters(const std::vector<torch::Tensor>& parameters,
                                    const std::vector<NamedMoELayer>& moe_layers) {
  auto local_to_this_rank = [&](const torch::Tensor& p) {
    for (const auto& [name, moe] : moe_layers)
      if (moe->exchange && moe->exchange->local_experts() < moe->options.num_experts() && moe->experts->is_per_expert(p))
        return true;
    return false;
  };
  ParameterPlacement placement;
  for (const auto& p : parameters)
    if (p.requires_grad()) (local_to_this_rank(p) ? placement.expert_local : placement.replicated).push_back(p);
  return placement;
}

GradientSync::GradientSync(std::shared_ptr<Communicator> communicator, std::vector<torch::Tensor> replicated,
                           std::vector<torch::Tensor> expert_local, int64_t bucket_bytes)
    : communicator_(std::move(communicator)), replicated_(std::move(replicated)), expert_local_(std::move(expert_local)) {
  int64_t filled = bucket_bytes;
  for (size_t i = 0; i < replicated_.size(); ++i) {
    const auto& p = replicated_[i];
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    const bool fits = !buckets_.empty() && filled + bytes <= bucket_bytes &&
                      p.scalar_type() == replicated_[buckets_.back().front()].scalar_type();
    if (!fits) {
      buckets_.emplace_back();
      filled = 0;
    }
    buckets_.back().push_back(i);
    filled += bytes;
  }
}

void GradientSync::synchronize(std::vector<double>& means, std::vector<double>& sums) {
  const int world = communicator_->world_size();
  if (world == 1) return;
  const double scale = 1.0 / world;
  torch::NoGradGuard no_grad;
  for (auto& p : expert_local_) {
    if (p.grad().defined())
      p.mutable_grad().mul_(scale);
    else
      p.mutable_grad() = torch::zeros_like(p);
  }
  const auto device = communicator_->device();
  // The figures ride in the first bucket (alone in a bucket of their own if there is none).
  for (size_t b = 0; b < std::max<size_t>(buckets_.size(), 1); ++b) {
    const bool with_figures = b == 0;
    const auto grad_dtype = buckets_.empty() ? torch::kFloat64 : replicated_[buckets_[b].front()].scalar_type();
    // bf16 and fp16 gradients are summed in float32, and so are the loss figures and routing counts
    // riding with them: a sum over ranks in 8 bits of mantissa would lose what it adds.
    const auto dtype = grad_dtype == torch::kBFloat16 || grad_dtype == torch::kHalf ? torch::kFloat : grad_dtype;
    std::vector<torch::Tensor> parts;
    if (!buckets_.empty())
      for (auto i : buckets_[b]) {
        auto& p = replicated_[i];
        parts.push_back(p.grad().defined() ? p.grad().reshape({-1}).to(dtype)
                                           : torch::zeros({p.numel()}, p.options().dtype(dtype)));
      }
    if (with_figures) {
      // Means are pre-divided so one sum serves both kinds.
      std::vector<double> figures;
      for (double v : means) figures.push_back(v * scale);
      figures.insert(figures.end(), sums.begin(), sums.end());
      parts.push_back(torch::tensor(figures, torch::kFloat64).to(parts.empty() ? device : parts.front().device(), dtype));
    }
    auto flat = torch::cat(parts).to(device);
    communicator_->all_reduce_sum(flat);
    if (!flat.device().is_cpu() && !buckets_.empty()) flat = flat.to(replicated_[buckets_[b].front()].device());
    int64_t offset = 0;
    if (!buckets_.empty())
      for (auto i : buckets_[b]) {
        auto& p = replicated_[i];
        // The averaged gradient becomes a view of the bucket: no copy back.
        p.mutable_grad() = flat.narrow(0, offset, p.numel()).view_as(p).mul_(scale).to(p.scalar_type());
        offset += p.numel();
      }
    if (with_figures) {
      const auto figures = flat.narrow(0, offset, static_cast<int64_t>(means.size() + sums.size()))
                               .to(torch::kCPU, torch::kFloat64).contiguous();
      const double* values = figures.data_ptr<double>();
      for (size_t i = 0; i < means.size(); ++i) means[i] = values[i];
      for (size_t i = 0; i < sums.size(); ++i) sums[i] = values[means.size() + i];
    }
  }
}

double GradientSync::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  // Each tensor's sum of squares stays on its device; one copy to the host per group (not one
  // synchronisation per tensor), then summed in the same order as always, so the norm is unchanged.
  auto squares = [](const std::vector<torch::Tensor>& tensors) {
    std::vector<torch::Tensor> sums;
    for (const auto& p : tensors)
      if (p.grad().defined()) sums.push_back(p.grad().to(torch::kFloat64).pow(2).sum());
    if (sums.empty()) return 0.0;
    const auto host = torch::stack(sums).to(torch::kCPU).contiguous();
    double sum = 0;
    for (int64_t i = 0; i < host.numel(); ++i) sum += host.data_ptr<double>()[i];
    return sum;
  };
  // Replicated gradients are equal on every rank after synchronize(): counted once. Expert
  // gradients are disjoint shards: summed over ranks.
  const double expert_part = sum_over_ranks(*communicator_, {squares(expert_local_)})[0];
  const double norm = std::sqrt(squares(replicated_) + expert_part);
  const double coefficient = max_norm / (norm + 1e-6);
  if (coefficient < 1)
    for (const auto* group : {&replicated_, &expert_local_})
      for (const auto& p : *group)
        if (p.grad().defined()) p.grad().mul_(coefficient);
  return norm;
}

std::vector<double> pack_routing_stats(const RoutingStats& stats) {
  std::vector<double> out;
  if (!stats.assigned.defined()) return out;
  const auto assigned = stats.assigned.to(torch::kCPU, torch::kFloat64).contiguous();
  const auto importance = stats.importance.to(torch::kCPU, torch::kFloat64).contiguous();
  out.assign(assigned.data_ptr<double>(), assigned.data_ptr<double>() + assigned.numel());
  out.insert(out.end(), importance.data_ptr<double>(), importance.data_ptr<double>() + importance.numel());
  out.push_back(static_cast<double>(stats.num_assignments));
  out.push_back(static_cast<double>(stats.num_dropped));
  out.push_back(static_cast<double>(stats.num_tokens));
  out.push_back(stats.entropy_sum());
  out.push_back(stats.z_sum());
  return out;
}

RoutingStats unpack_routing_stats(const std::vector<double>& values, size_t offset, const RoutingStats& like) {
  RoutingStats out = like;
  if (!like.assigned.defined()) return out;
  const int64_t experts = like.assigned.numel();
  const double* v = values.data() + offset;
  out.assigned = torch::tensor(std::vector<double>(v, v + experts), torch::kFloat64);
  out.importance = torch::tensor(std::vector<double>(v + experts, v + 2 * experts), torch::kFloat64);
  v += 2 * experts;
  out.num_assignments = std::llround(v[0]);
  out.num_dropped = std::llround(v[1]);
  out.num_tokens = std::llround(v[2]);
  if (like.has_logits()) out.logit_sums = torch::tensor(std::vector<double>{v[3], v[4]}, torch::kFloat64);
  return out;
}

RoutingStats sum_routing_stats(Communicator& communicator, const RoutingStats& stats) {
  if (communicator.world_size() == 1) return stats;
  return unpack_routing_stats(sum_over_ranks(communicator, pack_routing_stats(stats)), 0, stats);
}

}  // namespace moelab
