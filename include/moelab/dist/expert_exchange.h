// Expert parallelism (Shazeer et al. 2017, section 3.1): the E experts are split evenly over the W
// ranks, rank r holding experts [r*E/W, (r+1)*E/W). Routing and dispatch stay local; then one
// all-to-all sends each dispatched row to the rank of its expert, that rank runs its experts as
// one grouped product over the rows every rank sent it, and a second all-to-all brings the results
// back in the local plan's order for combining. So each expert sees the tokens of all W ranks'
// batches: the per-expert batch grows with W instead of shrinking.
//
// Split sizes are variable: every rank's per-expert row counts are all-gathered first. Capacity,
// when used, comes from those global counts (see plan()), so it does not depend on how tokens are
// spread over ranks.
//
// Shape legend: N local tokens, D width, E experts, K slots, M local rows, R rows received.
#pragma once
#include <torch/types.h>

#include <memory>
#include <vector>

#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/comm/communicator.h"
#include "moelab/experts/expert_bank.h"

namespace moelab {

struct ExchangePlan {
  DispatchPlan dispatch;      // this rank's rows, grouped by global expert id
  std::vector<int64_t> kept;  // [W * E]: rows rank r keeps for expert e, at r * E + e
};

// Wall time of this rank's expert computation (the local bank's forward, and its backward as the
// autograd engine runs it), summed since the last reset. For `moelab bench --dist`.
struct ExpertComputeTime {
  double forward_seconds = 0;
  double backward_seconds = 0;
  double backward_started = 0;  // internal: seconds on the steady clock when the bank's backward began
};

class ExpertExchange {
 public:
  // Throws Error unless W divides E.
  ExpertExchange(std::shared_ptr<Communicator> communicator, int64_t num_experts);

  int64_t num_experts() const { return num_experts_; }
  int64_t local_experts() const { return local_experts_; }
  int64_t first_expert() const { return first_expert_; }
  Communicator& communicator() const { return *communicator_; }

  // Collective. capacity_factor <= 0: dropless. Otherwise each expert keeps at most
  // C = ceil(capacity_factor * (all ranks' tokens) * K / E) rows, taken in the order (slot, rank,
  // token): first choices before second choices, then lower ranks first, then earlier tokens. With
  // the ranks' batches concatenated in rank order this is exactly the single-process plan of
  // DropPolicy::kPosition; kWeight would need a global sort and is refused.
  ExchangePlan plan(const Routing& routing, double capacity_factor, DropPolicy drop) const;

  // Collective and differentiable (w.r.t. x and the bank's parameters): rows [M, D] in
  // plan.dispatch order, each computed by its expert on whichever rank holds it. `local_bank` holds
  // this rank's experts, local id e <-> global id first_expert() + e.
  torch::Tensor run(ExpertBank& local_bank, const torch::Tensor& x, const ExchangePlan& plan) const;

  const ExpertComputeTime& compute_time() const { return *compute_time_; }
  void reset_compute_time() const { *compute_time_ = ExpertComputeTime(); }

 private:
  std::shared_ptr<Communicator> communicator_;
  // Shared with the autograd graphs that record the backward part.
  std::shared_ptr<ExpertComputeTime> compute_time_ = std::make_shared<ExpertComputeTime>();
  int64_t num_experts_, local_experts_, first_expert_;
};

// The all-to-all as an autograd operation: its backward sends the gradient rows back the way the
// forward rows came (send and receive sizes swapped). The graph keeps a share of the communicator.
torch::Tensor differentiable_all_to_all(const std::shared_ptr<Communicator>& communicator, const torch::Tensor& input,
                                        const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows);

}  // namespace moelab
