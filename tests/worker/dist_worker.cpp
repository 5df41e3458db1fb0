// One rank of the multi-process tests (test_distributed.cpp starts W of them on loopback with the
// launcher's variables). `moelab_dist_worker exchange` checks expert parallelism against the
// single-process computation that every rank can also do on its own: each rank builds the whole
// batch and the whole bank from the same seed, computes the single-process reference, then its
// share through the all-to-all, and compares outputs and gradients. Prints one line per case and
// exits non-zero on the first mismatch.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/comm/communicator.h"
#include "moelab/dist/expert_exchange.h"
#include "moelab/comm/launch_environment.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

int failures = 0;

void expect_close(const std::string& what, const torch::Tensor& got, const torch::Tensor& want, int rank) {
  const bool same_shape = got.sizes() == want.sizes();
  const double diff = same_shape && got.numel() > 0 ? (got - want).abs().max().item<double>() : 0.0;
  if (!same_shape || diff > 1e-5) {
    std::fprintf(stderr, "rank %d: FAIL %s: shapes %s vs %s, max difference %g\n", rank, what.c_str(),
                 c10::str(got.sizes()).c_str(), c10::str(want.sizes()).c_str(), diff);
    ++failures;
  }
}

enum class Pattern { kRandom, kOneExpertIdle, kAllToRankZero };

// The whole batch's routing, the same on every rank: N tokens, K = 2 distinct experts each.
Routing make_routing(Pattern pattern, int64_t n, int64_t experts) {
  auto scores = torch::rand({n, experts});
  if (pattern == Pattern::kOneExpertIdle) scores.select(1, experts - 1).fill_(-1);
  if (pattern == Pattern::kAllToRankZero) scores.narrow(1, experts / 2, experts / 2).fill_(-1);
  Routing routing;
  routing.expert_index = std::get<1>(scores.topk(2, 1));
  routing.gate_weight = torch::rand({n, 2}).requires_grad_(true);
  return routing;
}

Routing rows_of(const Routing& whole, int64_t first, int64_t count) {
  Routing part;
  part.expert_index = whole.expert_index.narrow(0, first, count);
  part.gate_weight = whole.gate_weight.detach().narrow(0, first, count).clone().requires_grad_(true);
  return part;
}

// The exchange on its own: a bank, a hand-made routing, with and without capacity.
void check_exchange(const std::shared_ptr<Communicator>& communicator, Pattern pattern, double capacity_factor,
                    const std::string& name) {
  const int rank = communicator->rank(), world = communicator->world_size();
  const int64_t experts = 2 * world, dim = 6, hidden = 10, n = 4 * world + 3;  // uneven token shares
  torch::manual_seed(11);
  FfnExpertBank whole(FfnExpertBankOptions(dim, hidden, experts));
  auto x = torch::randn({n, dim}).requires_grad_(true);
  const auto routing = make_routing(pattern, n, experts);
  const auto probe = torch::randn({n, dim});  // loss = sum(y * probe)

  const auto plan = make_dispatch_plan(routing, experts, capacity_factor);
  const auto y = combine_rows(whole.forward(x, plan), plan);
  (y * probe).sum().backward();

  ExpertExchange exchange(communicator, experts);
  FfnExpertBank local(FfnExpertBankOptions(dim, hidden, exchange.local_experts()));
  {
    torch::NoGradGuard no_grad;
    local.w_in.set_data(whole.w_in.narrow(0, exchange.first_expert(), exchange.local_experts()).clone());
    local.b_in.set_data(whole.b_in.narrow(0, exchange.first_expert(), exchange.local_experts()).clone());
    local.w_out.set_data(whole.w_out.narrow(0, exchange.first_expert(), exchange.local_experts()).clone());
    local.b_out.set_data(whole.b_out.narrow(0, exchange.first_expert(), exchange.local_experts()).clone());
  }
  const auto [first, count] = even_share(n, rank, world);
  auto my_x = x.detach().narrow(0, first, count).clone().requires_grad_(true);
  const auto my_routing = rows_of(routing, first, count);
  const auto my_plan = exchange.plan(my_routing, capacity_factor, DropPolicy::kPosition);
  const auto my_y = combine_rows(exchange.run(local, my_x, my_plan), my_plan.dispatch);
  (my_y * probe.narrow(0, first, count)).sum().backward();

  expect_close(name + " output", my_y, y.detach().narrow(0, first, count), rank);
  expect_close(name + " input gradient", my_x.grad(), x.grad().narrow(0, first, count), rank);
  expect_close(name + " gate gradient", my_routing.gate_weight.grad(), routing.gate_weight.grad().narrow(0, first, count),
               rank);
  for (const auto& [mine, theirs] : {std::pair{local.w_in, whole.w_in}, std::pair{local.b_in, whole.b_in},
                                     std::pair{local.w_out, whole.w_out}, std::pair{local.b_out, whole.b_out}})
    expect_close(name + " expert gradient", mine.grad(),
                 theirs.grad().narrow(0, exchange.first_expert(), exchange.local_experts()), rank);
  if (my_plan.dispatch.num_dropped != 0 || plan.num_dropped != 0) {
    const auto dropped = sum_over_ranks(*communicator, {static_cast<double>(my_plan.dispatch.num_dropped)})[0];
    if (static_cast<int64_t>(dropped) != plan.num_dropped) {
      std::fprintf(stderr, "rank %d: FAIL %s: %g dropped over ranks, single process %lld\n", rank, name.c_str(), dropped,
                   static_cast<long long>(plan.num_dropped));
      ++failures;
    }
  }
  std::printf("rank %d: %s checked (%lld rows here, %lld dropped)\n", rank, name.c_str(),
              static_cast<long long>(my_plan.dispatch.token_index.size(0)),
              static_cast<long long>(my_plan.dispatch.num_dropped));
}

// The whole layer: router, exchange, combine, shared expert; against the same layer in one process.
void check_layer(const std::shared_ptr<Communicator>& communicator) {
  const int rank = communicator->rank(), world = communicator->world_size();
  const int64_t experts = 2 * world, dim = 8, n = 5 * world + 1;
  auto options = MoELayerOptions(dim, experts, 2, 12).router("noisy_topk").noisy(false).shared_experts(1);
  options.balance(BalanceWeights{0.0, 0.0, 0.0, 0.0});
  torch::manual_seed(5);
  MoELayer whole(options);
  torch::manual_seed(5);
  MoELayer mine(MoELayerOptions(options).expert_group(communicator));
  const auto x = torch::randn({n, dim});
  const auto probe = torch::randn({n, dim});
  auto x_whole = x.clone().requires_grad_(true);
  (whole->forward(x_whole).output * probe).sum().backward();
  const auto [first, count] = even_share(n, rank, world);
  auto x_mine = x.narrow(0, first, count).clone().requires_grad_(true);
  (mine->forward(x_mine).output * probe.narrow(0, first, count)).sum().backward();

  expect_close("layer output gradient wrt input", x_mine.grad(), x_whole.grad().narrow(0, first, count), rank);
  const auto whole_parameters = whole->named_parameters();
  for (const auto& item : mine->named_parameters()) {
    const auto& reference = whole_parameters[item.key()];
    if (!reference.grad().defined()) continue;  // unused in this configuration (the router's noise weights)
    if (item.key().rfind("experts.", 0) == 0) {
      expect_close("layer " + item.key(), item.value(),
                   reference.narrow(0, mine->exchange->first_expert(), mine->exchange->local_experts()), rank);
      expect_close("layer gradient " + item.key(), item.value().grad(),
                   reference.grad().narrow(0, mine->exchange->first_expert(), mine->exchange->local_experts()), rank);
    } else {
      // Replicated parameters: this rank's tokens' share; summed over ranks it is the whole.
      auto summed = item.value().grad().defined() ? item.value().grad().clone() : torch::zeros_like(item.value());
      communicator->all_reduce_sum(summed);
      expect_close("layer gradient " + item.key(), summed, reference.grad(), rank);
    }
  }
  if (mine->params_total() != whole->params_total()) {
    std::fprintf(stderr, "rank %d: FAIL params_total %lld vs %lld\n", rank, static_cast<long long>(mine->params_total()),
                 static_cast<long long>(whole->params_total()));
    ++failures;
  }
  std::printf("rank %d: layer checked\n", rank);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  try {
    at::set_num_threads(1);
    const auto launch = LaunchEnvironment::from_environment();
    auto communicator = connect_process_group(launch, std::chrono::seconds(30));
    if (what == "exchange") {
      check_exchange(communicator, Pattern::kRandom, 0.0, "uneven splits");
      check_exchange(communicator, Pattern::kOneExpertIdle, 0.0, "an expert with no tokens");
      check_exchange(communicator, Pattern::kAllToRankZero, 0.0, "every token to rank 0");
      check_exchange(communicator, Pattern::kRandom, 0.75, "capacity 0.75");
      check_exchange(communicator, Pattern::kAllToRankZero, 1.0, "capacity 1.0, every token to rank 0");
      check_layer(communicator);
    } else {
      std::fprintf(stderr, "usage: moelab_dist_worker exchange (under a launcher's variables)\n");
      return 2;
    }
    communicator->barrier();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "rank error: %s\n", error.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
