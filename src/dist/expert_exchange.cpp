#include "moelab/dist/expert_exchange.h"

#include <torch/autograd.h>

#include <chrono>
#include <cstdint>

#include "moelab/util/error.h"

namespace moelab {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// An object the graph owns a share of: a backward may run after the layer that built the graph is
// gone (a graph kept by the caller), so saved data holds shared ownership, never a raw pointer.
template <typename T>
struct SharedInGraph : torch::CustomClassHolder {
  explicit SharedInGraph(std::shared_ptr<T> v) : value(std::move(v)) {}
  std::shared_ptr<T> value;
};

template <typename T>
c10::IValue keep_in_graph(std::shared_ptr<T> value) {
  return c10::IValue::make_capsule(c10::make_intrusive<SharedInGraph<T>>(std::move(value)));
}

template <typename T>
std::shared_ptr<T> kept_in_graph(const c10::IValue& saved) {
  return c10::static_intrusive_pointer_cast<SharedInGraph<T>>(saved.toCapsule())->value;
}

class AllToAll : public torch::autograd::Function<AllToAll> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input,
                               const std::shared_ptr<Communicator>& communicator, const std::vector<int64_t>& send_rows,
                               const std::vector<int64_t>& recv_rows) {
    ctx->saved_data["communicator"] = keep_in_graph(communicator);
    ctx->saved_data["send_rows"] = send_rows;
    ctx->saved_data["recv_rows"] = recv_rows;
    ctx->saved_data["row_shape"] = input.sizes().slice(1).vec();
    ctx->saved_data["dtype"] = static_cast<int64_t>(input.scalar_type());
    return communicator->all_to_all(input, send_rows, recv_rows);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto communicator = kept_in_graph<Communicator>(ctx->saved_data["communicator"]);
    const auto send_rows = ctx->saved_data["send_rows"].toIntVector();
    const auto recv_rows = ctx->saved_data["recv_rows"].toIntVector();
    // Every rank must take part in the backward exchange, even one whose rows got no gradient.
    auto grad = grads[0];
    if (!grad.defined()) {
      int64_t received = 0;
      for (auto rows : recv_rows) received += rows;
      auto shape = ctx->saved_data["row_shape"].toIntVector();
      shape.insert(shape.begin(), received);
      grad = torch::zeros(shape, torch::TensorOptions()
                                     .dtype(static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt()))
                                     .device(communicator->device()));
    }
    return {communicator->all_to_all(grad.contiguous(), recv_rows, send_rows), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// An identity in the forward pass whose backward notes the time: placed on the bank's output it
// fires when the bank's backward begins, on the bank's input when it has ended.
class BackwardClock : public torch::autograd::Function<BackwardClock> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const std::shared_ptr<ExpertComputeTime>& time,
                               bool at_output) {
    ctx->saved_data["time"] = keep_in_graph(time);
    ctx->saved_data["at_output"] = at_output;
    return x.clone();
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto time = kept_in_graph<ExpertComputeTime>(ctx->saved_data["time"]);
    if (ctx->saved_data["at_output"].toBool())
      time->backward_started = steady_seconds();
    else
      time->backward_seconds += steady_seconds() - time->backward_started;
    return {grads[0], torch::Tensor(), torch::Tensor()};
  }
};

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  const auto cpu = t.to(torch::kCPU, torch::kInt64).contiguous();
  return {cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + cpu.numel()};
}

torch::Tensor int_tensor(const std::vector<int64_t>& values, const torch::Device& device) {
  return torch::tensor(values, torch::kInt64).to(device);
}

}  // namespace

torch::Tensor differentiable_all_to_all(const std::shared_ptr<Communicator>& communicator, const torch::Tensor& input,
                                        const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows) {
  return AllToAll::apply(input, communicator, send_rows, recv_rows);
}

ExpertExchange::ExpertExchange(std::shared_ptr<Communicator> communicator, int64_t num_experts)
    : communicator_(std::move(communicator)), num_experts_(num_experts) {
  const int world = communicator_->world_size();
  if (num_experts % world != 0)
    fail("moe.parallel = \"expert\" splits moe.experts = {} over {} ranks: the number of experts must be a "
         "multiple of the number of ranks",
         num_experts, world);
  local_experts_ = num_experts / world;
  first_expert_ = communicator_->rank() * local_experts_;
}

ExchangePlan ExpertExchange::plan(const Routing& routing, double capacity_factor, DropPolicy drop) const {
  const int world = communicator_->world_size();
  const int me = communicator_->rank();
  const int64_t experts = num_experts_;
  const int64_t n = routing.expert_index.size(0), k = routing.expert_index.size(1);
  const bool capped = capacity_factor > 0;
  if (capped && (drop == DropPolicy::kWeight || drop == DropPolicy::kPriority))
    fail("moe.capacity_drop = \"{}\" is not available with moe.parallel = \"expert\" (it would need a global "
         "sort of every rank's gate weights); use \"position\"",
         drop_policy_name(drop));
  if (capped && drop == DropPolicy::kToken && k > 1)
    fail("causal evaluation with a capacity and moe.k > 1 is not available with moe.parallel = \"expert\" (its "
         "cross-rank quotas go slot by slot); set moe.eval_capacity_factor = 0 (dropless evaluation)");

  ExchangePlan out;
  out.dispatch = make_dispatch_plan(routing, experts, /*capacity_factor=*/0.0);
  auto& plan = out.dispatch;
  // Rows are grouped by expert and, inside an expert, by slot-major position k * N + token, so the
  // rows of one (expert, slot) pair are contiguous, in group order e * K + slot.
  const auto slot = n > 0 ? plan.slot_position.div(n, "floor") : plan.slot_position;
  const auto group = plan.expert_of_row * k + slot;
  const auto counts = torch::bincount(group, /*weights=*/{}, /*minlength=*/experts * k);  // [E*K]

  // One all-gather: every rank's [E*K] counts and its token count.
  auto mine = torch::cat({counts.to(torch::kCPU, torch::kInt64), torch::tensor({n}, torch::kInt64)});
  const auto all = to_vector(all_gather_cat(*communicator_, mine.to(communicator_->device()), 0));
  const int64_t stride = experts * k + 1;
  auto count_of = [&](int r, int64_t e, int64_t s) { return all[r * stride + e * k + s]; };
  int64_t global_tokens = 0;
  for (int r = 0; r < world; ++r) global_tokens += all[r * stride + experts * k];

  // quota[r][e][s]: rows rank r keeps for expert e from slot s.
  std::vector<int64_t> quota(static_cast<size_t>(world) * experts * k);
  auto quota_of = [&](int r, int64_t e, int64_t s) -> int64_t& { return quota[(r * experts + e) * k + s]; };
  plan.capacity = capped ? expert_capacity(capacity_factor, global_tokens * k, experts) : 0;
  for (int64_t e = 0; e < experts; ++e) {
    int64_t room = capped ? plan.capacity : INT64_MAX;
    for (int64_t s = 0; s < k; ++s)
      for (int r = 0; r < world; ++r) {
        const int64_t take = std::min(count_of(r, e, s), room);
        quota_of(r, e, s) = take;
        room -= take;
      }
  }
  out.kept.assign(static_cast<size_t>(world) * experts, 0);
  for (int r = 0; r < world; ++r)
    for (int64_t e = 0; e < experts; ++e)
      for (int64_t s = 0; s < k; ++s) out.kept[r * experts + e] += quota_of(r, e, s);

  if (capped) {
    const auto device = plan.token_index.device();
    std::vector<int64_t> my_quota(quota.begin() + static_cast<int64_t>(me) * experts * k,
                                  quota.begin() + static_cast<int64_t>(me + 1) * experts * k);
    const auto group_start = counts.cumsum(0) - counts;
    const auto rank_in_group =
        torch::arange(group.size(0), group.options()) - group_start.index_select(0, group);
    const auto keep = (rank_in_group < int_tensor(my_quota, device).index_select(0, group)).nonzero().squeeze(1);
    plan.token_index = plan.token_index.index_select(0, keep);
    plan.slot_weight = plan.slot_weight.index_select(0, keep);
    plan.expert_of_row = plan.expert_of_row.index_select(0, keep);
    plan.slot_position = plan.slot_position.index_select(0, keep);
    int64_t kept_here = 0;
    for (int64_t e = 0; e < experts; ++e) {
      plan.rows_per_expert[e] = out.kept[me * experts + e];
      kept_here += plan.rows_per_expert[e];
    }
    plan.num_dropped = plan.num_assignments - kept_here;
  }
  return out;
}

torch::Tensor ExpertExchange::run(ExpertBank& local_bank, const torch::Tensor& x, const ExchangePlan& plan) const {
  const int world = communicator_->world_size();
  const int me = communicator_->rank();
  const int64_t experts = num_experts_, local = local_experts_;
  auto kept = [&](int r, int64_t e) { return plan.kept[r * experts + e]; };

  std::vector<int64_t> send(world, 0), recv(world, 0);
  for (int q = 0; q < world; ++q)
    for (int64_t e = 0; e < local; ++e) {
      send[q] += kept(me, q * local + e);
      recv[q] += kept(q, first_expert_ + e);
    }
  const auto rows = dispatch_rows(x, plan.dispatch);  // [M, D], grouped by global expert = by rank
  const auto received = differentiable_all_to_all(communicator_, rows, send, recv);  // [R, D], by source rank

  // Regroup what arrived (source rank, then expert) into expert-major blocks for the local bank.
  std::vector<int64_t> order, rows_per_local_expert(local, 0);
  std::vector<int64_t> source_start(world, 0);
  for (int q = 1; q < world; ++q) source_start[q] = source_start[q - 1] + recv[q - 1];
  for (int64_t e = 0; e < local; ++e)
    for (int q = 0; q < world; ++q) {
      int64_t start = source_start[q];
      for (int64_t before = 0; before < e; ++before) start += kept(q, first_expert_ + before);
      for (int64_t i = 0; i < kept(q, first_expert_ + e); ++i) order.push_back(start + i);
      rows_per_local_expert[e] += kept(q, first_expert_ + e);
    }
  const auto device = x.device();
  const int64_t total = static_cast<int64_t>(order.size());
  const auto order_tensor = int_tensor(order, device);
  const auto grouped = world == 1 ? received : received.index_select(0, order_tensor);

  DispatchPlan local_plan;
  local_plan.num_tokens = total;
  local_plan.num_assignments = total;
  local_plan.rows_per_expert = rows_per_local_expert;
  local_plan.token_index = torch::arange(total, torch::TensorOptions().dtype(torch::kInt64).device(device));
  local_plan.slot_position = local_plan.token_index;
  local_plan.expert_of_row = torch::repeat_interleave(
      torch::arange(local, local_plan.token_index.options()), int_tensor(rows_per_local_expert, device));
  local_plan.slot_weight = torch::ones({total}, x.options());
  local_plan.assigned_per_expert = int_tensor(rows_per_local_expert, device);
  const bool timed = torch::GradMode::is_enabled() && grouped.requires_grad();
  const auto bank_input = timed ? BackwardClock::apply(grouped, compute_time_, false) : grouped;
  const double started = steady_seconds();
  auto computed = local_bank.forward(bank_input, local_plan);  // [R, D], expert-major
  compute_time_->forward_seconds += steady_seconds() - started;
  if (timed) computed = BackwardClock::apply(computed, compute_time_, true);

  torch::Tensor back = computed;
  if (world != 1) {
    auto inverse = torch::empty_like(order_tensor);
    inverse.scatter_(0, order_tensor, torch::arange(total, order_tensor.options()));
    back = computed.index_select(0, inverse);  // source-rank order again
  }
  return differentiable_all_to_all(communicator_, back, recv, send);
}

}  // namespace moelab
