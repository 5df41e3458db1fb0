// Keeping W replicas in step after each backward pass. Replicated parameters (everything under data
// parallelism; everything but the local experts under expert parallelism) get the mean gradient of
// all ranks, through one all-reduce per bucket of flattened gradients. An expert-local parameter
// already holds the sum of every rank's loss gradient (the backward all-to-all brought them), so it
// is only scaled by 1/W. The result equals the gradient of one process on the global batch: that
// process's loss is the mean of the W ranks' (equal-sized) batch means.
//
// The all-reduce runs after backward, not overlapped with it: LibTorch 1.13 has no hook that fires
// once a parameter's gradient is fully accumulated (post-accumulate hooks came in 2.1).
#pragma once
#include <torch/types.h>

#include <memory>
#include <vector>

#include "moelab/comm/communicator.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/layers/routing_stats.h"

namespace moelab {

// A model's trainable parameters by where they live: copies on every rank, or only this rank's
// experts (the MoE layer's stacked expert tensors, when its experts are split over ranks).
struct ParameterPlacement {
  std::vector<torch::Tensor> replicated, expert_local;
};
ParameterPlacement place_parameters(const std::vector<torch::Tensor>& parameters, const std::vector<NamedMoELayer>& moe_layers);

class GradientSync {
 public:
  GradientSync(std::shared_ptr<Communicator> communicator, std::vector<torch::Tensor> replicated,
               std::vector<torch::Tensor> expert_local, int64_t bucket_bytes = int64_t{16} << 20);

  // After backward. `means` (loss figures) are replaced by their mean over ranks and `sums`
  // (counts) by their sum, in the same all-reduce as the first bucket. A no-op at W = 1.
  // Parameters that got no gradient on this rank take part with zeros, so every rank sends the
  // same layout and every optimizer sees a gradient. Replicated gradients become views of the
  // buckets: clear them with zero_grad(/*set_to_none=*/true), as the trainer does.
  void synchronize(std::vector<double>& means, std::vector<double>& sums);

  // Gradient-norm clipping over the whole model on every rank (clip_grad_norm_'s rule: scale by
  // max_norm / (norm + 1e-6) when that is < 1). Returns the norm before clipping.
  double clip_grad_norm(double max_norm);

 private:
  std::shared_ptr<Communicator> communicator_;
  std::vector<torch::Tensor> replicated_, expert_local_;
  std::vector<std::vector<size_t>> buckets_;  // indices into replicated_
};

// A batch's routing statistics summed over ranks: packed into doubles for GradientSync's `sums`,
// and back.
std::vector<double> pack_routing_stats(const RoutingStats& stats);
RoutingStats unpack_routing_stats(const std::vector<double>& values, size_t offset, const RoutingStats& like);
RoutingStats sum_routing_stats(Communicator& communicator, const RoutingStats& stats);

}  // namespace moelab
