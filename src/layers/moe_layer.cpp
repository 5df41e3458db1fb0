#include "moelab/layers/moe_layer.h"

#include "moelab/device/precision.h"
#include "moelab/balance/sequence_balance_loss.h"

#include <fmt/ranges.h>

#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/experts/lora_expert_bank.h"
#include "moelab/experts/low_rank_expert_bank.h"
#include "moelab/experts/mpo_expert_bank.h"
#include "moelab/experts/tensor_train_expert_bank.h"
#include "moelab/experts/shared_projection_expert_bank.h"
#include "moelab/layers/norm.h"
#include "moelab/util/blas_env.h"
#include "moelab/util/error.h"
#include "moelab/util/parameter_count.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>

namespace moelab {

std::shared_ptr<Router> make_router(const MoELayerOptions& options) {
  return make_router(options.router(), RouterOptions(options.model_dim(), options.num_experts() + options.null_experts(), options.k())
                                           .noisy(options.noisy())
                                           .noise_epsilon(options.noise_epsilon())
                                           .capacity_factor(options.capacity_factor())
                                           .eval_capacity_factor(options.eval_capacity_factor())
                                           .causal(options.causal())
                                           .groups(options.groups())
                                           .group_k(options.group_k())
                                           .affinity(options.affinity())
                                           .route_scale(options.route_scale())
                                           .bias_update_rate(options.bias_update_rate())
                                           .l1_init(options.relu_l1_init())
                                           .l1_rate(options.relu_l1_rate())
                                           .balance(options.balance()));
}

namespace {

using BankFactory = std::function<std::shared_ptr<ExpertBank>(const MoELayerOptions&, int64_t first_expert)>;

// Name -> constructor; expert_bank_names() is read from this one table.
const std::vector<std::pair<std::string, BankFactory>>& bank_table() {
  static const std::vector<std::pair<std::string, BankFactory>> table = {
      {"ffn",
       [](const MoELayerOptions& o, int64_t first) {
         return std::make_shared<FfnExpertBank>(
             FfnExpertBankOptions(o.model_dim(), o.expert_hidden(), o.num_experts())
                 .first_expert(first).hidden_dropout(o.expert_dropout()));
       }},
      {"low_rank",
       [](const MoELayerOptions& o, int64_t first) {
         return std::make_shared<LowRankExpertBank>(
             LowRankExpertBankOptions(o.model_dim(), o.expert_hidden(), o.num_experts(), o.rank())
                 .first_expert(first));
       }},
      {"shared_projection",
       [](const MoELayerOptions& o, int64_t first) {
         return std::make_shared<SharedProjectionExpertBank>(
             SharedProjectionExpertBankOptions(o.model_dim(), o.expert_hidden(), o.num_experts(), o.rank())
                 .first_expert(first));
       }},
      {"lora",
       [](const MoELayerOptions& o, int64_t first) {
         return std::make_shared<LoraExpertBank>(
             LoraExpertBankOptions(o.model_dim(), o.expert_hidden(), o.num_experts(), o.rank())
                 .first_expert(first)
                 .freeze_base(o.freeze_base()));
       }},
      {"mpo",
       [](const MoELayerOptions& o, int64_t first) {
         return std::make_shared<MpoExpertBank>(MpoExpertBankOptions(o.model_dim(), o.expert_hidden(), o.num_experts(),
                                                                     o.model_factors(), o.hidden_factors(), o.bond())
                                                    .first_expert(first)
                                                    .central_update_p(o.central_update_p()));
       }},
      {"tensor_train",
       [](const MoELayerOptions& o, int64_t first) {
         return std::make_shared<TensorTrainExpertBank>(
             TensorTrainExpertBankOptions(o.model_dim(), o.expert_hidden(), o.num_experts(), o.model_factors(),
                                          o.hidden_factors(), o.rank())
                 .first_expert(first)
                 .freeze_base(o.freeze_base()));
       }},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& expert_bank_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& entry : bank_table()) out.push_back(entry.first);
    return out;
  }();
  return names;
}

std::shared_ptr<ExpertBank> make_expert_bank(const MoELayerOptions& options, int64_t first_expert) {
  for (const auto& [known, factory] : bank_table())
    if (known == options.bank()) return factory(options, first_expert);
  fail("unknown moe.bank '{}' (known: {})", options.bank(), fmt::join(expert_bank_names(), ", "));
}

MoELayerImpl::MoELayerImpl(const MoELayerOptions& options_) : options(options_) { reset(); }

void MoELayerImpl::reset() {
  warn_once_if_slow_blas();
  if (options.expert_dropout() < 0 || options.expert_dropout() >= 1)
    fail("moe.expert_dropout must be in [0, 1), got {}", options.expert_dropout());
  if (options.expert_dropout() > 0 && options.bank() != "ffn")
    fail("moe.expert_dropout is implemented for the ffn bank only, not '{}'", options.bank());
  if (options.null_experts() < 0) fail("moe.null_experts must be >= 0, got {}", options.null_experts());
  if (options.router() == kSoftRouter) {
    check_soft_options();
    soft = register_module("router", std::make_shared<SoftSlots>(options.model_dim(), options.num_experts(),
                                                                 options.soft_slots()));
  } else {
    router = register_module("router", make_router(options));
  }
  std::shared_ptr<ExpertBank> bank;
  if (options.expert_group()) {
    // Only this rank's experts, with the values one process holding all of them would give them.
    exchange = std::make_shared<ExpertExchange>(options.expert_group(), options.num_experts());
    auto local_options = options;
    local_options.num_experts(exchange->local_experts()).expert_group(nullptr);
    bank = make_expert_bank(local_options, exchange->first_expert());
    if (options.capacity_drop() != DropPolicy::kPosition &&
        (options.capacity_factor() > 0 || options.eval_capacity_factor() > 0))
      fail("moe.capacity_drop = \"{}\" is not available with moe.parallel = \"expert\"; use \"position\"",
           drop_policy_name(options.capacity_drop()));
  }
  if (!bank) bank = make_expert_bank(options);
  experts = register_module("experts", bank);
  if (options.shared_experts() < 0) fail("moe.shared_experts must be >= 0, got {}", options.shared_experts());
  if (options.shared_experts() > 0)
    shared = register_module(
        "shared", DenseFfn(DenseFfnOptions(options.model_dim(), options.shared_experts() * options.expert_hidden())
                               .hidden_dropout(options.expert_dropout())));
  if (soft) return;
  if (!router->takes_capacity() && (options.capacity_factor() > 0 || options.eval_capacity_factor() > 0))
    fail("router '{}' is dropless (a token's expert count varies): set moe.capacity_factor = 0 and "
         "moe.eval_capacity_factor = -1 or 0",
         options.router());
  // Say it now rather than at the first training step: the load loss needs a smooth estimate.
  if (options.balance().load > 0 && !router->has_smooth_load())
    fail("moe.balance.load = {} needs noisy gates (router noisy_topk or hierarchical with moe.noisy = true); "
         "router '{}' has none: set moe.balance.load = 0",
         options.balance().load, options.router());
  if ((options.balance().switch_loss > 0 || options.balance().z > 0) && !router->has_logits())
    fail("moe.balance.switch and moe.balance.z need router logits; router '{}' has none", options.router());
  if (options.jitter() < 0 || options.jitter() >= 1) fail("moe.jitter must be in [0, 1), got {}", options.jitter());
  if (options.router_norm() != "none" && options.router_norm() != "rms")
    fail("moe.router_norm must be none or rms, got '{}'", options.router_norm());
}

void MoELayerImpl::check_soft_options() const {
  // Soft MoE fills every slot of every expert: there is no routing to balance, cap or drop.
  const auto& b = options.balance();
  if (b.importance > 0 || b.load > 0 || b.switch_loss > 0 || b.z > 0 || b.sequence > 0)
    fail("moe.router = \"soft\" (Soft MoE) has no routing to balance: set moe.balance.importance, load, switch, z "
         "and sequence to 0");
  if (options.causal())
    fail("moe.router = \"soft\" (Soft MoE) mixes every token of a sequence into every slot, later tokens "
         "included: it cannot run in a causal model (language model, decoder); use it in an encoder (translation: "
         "give the decoder its own router with moe.decoder_router)");
  if (options.capacity_factor() > 0 || options.eval_capacity_factor() > 0)
    fail("moe.router = \"soft\" (Soft MoE) drops nothing: set moe.capacity_factor = 0 and moe.eval_capacity_factor = -1");
  if (options.expert_group())
    fail("moe.router = \"soft\" (Soft MoE) is not available with moe.parallel = \"expert\"");
  if (options.null_experts() > 0) fail("moe.router = \"soft\" (Soft MoE) has no null experts: set moe.null_experts = 0");
  if (options.jitter() > 0) fail("moe.router = \"soft\" (Soft MoE) takes no router jitter: set moe.jitter = 0");
  if (options.router_norm() != "none")
    fail("moe.router = \"soft\" (Soft MoE) has no token router to normalise the input of: set moe.router_norm = "
         "\"none\"");
}

MoEOutput MoELayerImpl::forward(const torch::Tensor& x, const torch::Tensor& token_ids, const SequenceLayout& layout) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.model_dim(), "MoE layer expects [N, ", options.model_dim(),
              "] input, got ", x.sizes());
  if (layout.defined() && layout.rows() != x.size(0))
    fail("the MoE layer's sequence layout has {} rows, its input {}", layout.rows(), x.size(0));
  if (soft) return forward_soft(x, layout);
  auto router_input = options.router_norm() == "rms" ? rms_normalised(x) : x;
  if (is_training() && options.jitter() > 0)
    router_input = router_input * torch::empty_like(x).uniform_(1.0 - options.jitter(), 1.0 + options.jitter());
  const Routing routed = router->route(router_input, token_ids);
  // The balancing losses see the null experts too; dispatch and the statistics only the real ones.
  const Routing routing = options.null_experts() > 0 ? without_experts_from(routed, options.num_experts()) : routed;
  if (routing_observer) routing_observer(routing, token_ids);
  const double capacity_factor = !is_training() && options.eval_capacity_factor() >= 0
                                     ? options.eval_capacity_factor()
                                     : options.capacity_factor();
  const double dispatch_capacity = router->fills_capacity() ? 0.0 : capacity_factor;
  // Weight priority lets a later, heavier token push an earlier one out, and slot-major position
  // priority lets a later token's first choice push out an earlier token's second; token order looks
  // only at earlier rows ([T*B] flattening puts every earlier position of a sequence first).
  const DropPolicy drop_policy = !is_training() && options.causal() ? DropPolicy::kToken : options.capacity_drop();
  DispatchPlan plan;
  torch::Tensor rows;  // [M, D]
  if (exchange) {
    auto exchange_plan = exchange->plan(routing, dispatch_capacity, drop_policy);
    rows = exchange->run(*experts, x, exchange_plan);
    plan = std::move(exchange_plan.dispatch);
  } else {
    plan = make_dispatch_plan(routing, options.num_experts(), dispatch_capacity, drop_policy);
    rows = experts->forward(x, plan);
  }
  auto balanced = balance(routed, x, layout);
  MoEOutput out;
  out.output = combine_rows(rows, plan);
  if (shared) out.output = out.output + shared(x);
  out.aux_loss = balanced.aux_loss;
  out.loss_terms = std::move(balanced.terms);
  out.stats = RoutingStats::from(routing, plan);
  out.stats.set_input(x);
  return out;
}

BalanceResult MoELayerImpl::balance(const Routing& routed, const torch::Tensor& x, const SequenceLayout& layout) {
  const Float32Scope float32(x.device());
  auto result = [&] {
    if (!options.global_balance() || !is_training()) return balance_losses(routed, options.balance());
    const auto local = balance_sums(routed);
    auto packed = pack_balance_sums(local);
    int64_t ranks = 1;
    if (options.balance_group()) {
      ranks = options.balance_group()->world_size();
      auto on_device = packed.to(options.balance_group()->device());
      options.balance_group()->all_reduce_sum(on_device);
      packed = on_device.to(packed.device());
    }
    if (step_pool_.importance.defined()) packed = packed + pack_balance_sums(step_pool_);
    const auto pooled = unpack_balance_sums(packed, local);
    if (micro_batches_ > 1) step_pool_ = pooled;
    return balance_losses(routed, options.balance(),
                          pooled_sums(local, pooled, static_cast<double>(ranks * micro_batches_)));
  }();
  if (options.balance().sequence > 0) {
    if (!routed.logits.defined())
      fail("moe.balance.sequence needs router logits; router '{}' has none", options.router());
    if (!layout.defined())
      fail("moe.balance.sequence needs the sequences of the batch, and this model gives its MoE layer none");
    const auto probs = routed.probs.defined() ? routed.probs : torch::softmax(routed.logits, 1);
    const auto term = sequence_balance_loss(probs, routed.expert_index, layout.sequence_of_rows(x.device()), layout.batch);
    result.aux_loss = result.aux_loss + options.balance().sequence * term;
    result.terms["sequence"] = term.detach();
  }
  return result;
}

MoEOutput MoELayerImpl::forward_soft(const torch::Tensor& x, const SequenceLayout& layout) {
  if (!layout.defined())
    fail("moe.router = \"soft\" (Soft MoE) needs whole sequences, and this model gives its MoE layer none");
  const int64_t length = layout.length, batch = layout.batch, dim = options.model_dim();
  const int64_t num_experts = options.num_experts(), per_expert = soft->slots_per_expert(), slots = soft->num_slots();
  const auto rows = layout.grid_rows(x.device());
  // Back to a [B, T, D] grid, padding as zero rows that the dispatch softmax leaves out.
  const auto grid = torch::zeros({length * batch, dim}, x.options()).index_copy(0, rows, x);
  const auto real = torch::zeros({length * batch}, x.options().dtype(torch::kBool))
                        .index_fill(0, rows, true)
                        .view({length, batch})
                        .t();
  const auto tokens = grid.view({length, batch, dim}).transpose(0, 1);  // [B, T, D]
  const auto weights = [&] {
    const Float32Scope float32(x.device());
    return soft->forward(tokens, real);
  }();
  const auto slot_inputs = torch::bmm(weights.dispatch.transpose(1, 2).to(x.scalar_type()), tokens);  // [B, S, D]
  // Expert-major rows, so the bank runs one product per expert over its B * p slots.
  const auto expert_rows = slot_inputs.view({batch, num_experts, per_expert, dim}).transpose(0, 1).reshape({-1, dim});
  DispatchPlan plan;
  const auto index_options = torch::TensorOptions().dtype(torch::kInt64).device(x.device());
  plan.token_index = torch::arange(expert_rows.size(0), index_options);
  plan.expert_of_row = torch::arange(num_experts, index_options).repeat_interleave(batch * per_expert);
  plan.slot_position = plan.token_index;
  plan.slot_weight = torch::ones({expert_rows.size(0)}, x.options());
  plan.rows_per_expert.assign(static_cast<size_t>(num_experts), batch * per_expert);
  plan.assigned_per_expert = torch::full({num_experts}, batch * per_expert, index_options);
  plan.num_tokens = expert_rows.size(0);
  plan.num_assignments = expert_rows.size(0);
  const auto slot_outputs = experts->forward(expert_rows, plan)
                                .view({num_experts, batch, per_expert, dim})
                                .transpose(0, 1)
                                .reshape({batch, slots, dim});
  const auto mixed = torch::bmm(weights.combine.to(x.scalar_type()), slot_outputs);  // [B, T, D]
  MoEOutput out;
  out.output = mixed.transpose(0, 1).reshape({length * batch, dim}).index_select(0, rows);
  if (shared) out.output = out.output + shared(x);
  out.aux_loss = torch::zeros({}, x.options());
  out.stats = RoutingStats::from_soft(weights, real, x.size(0));
  out.stats.set_input(x);
  return out;
}

void MoELayerImpl::start_step(int64_t micro_batches) {
  if (micro_batches < 1) fail("a training step needs at least one micro-batch, got {}", micro_batches);
  step_pool_ = BalanceSums();
  micro_batches_ = micro_batches;
}

int64_t MoELayerImpl::params_total() const {
  return count_parameters(*this) - experts->params_total() + bank_params_total();
}

int64_t MoELayerImpl::bank_params_total() const {
  if (!exchange) return experts->params_total();
  return experts->params_shared() + experts->params_per_expert_unique() * options.num_experts();
}

double MoELayerImpl::nominal_experts_per_token() const {
  // Soft MoE: E * p slots per sequence of T tokens, E * p / T expert passes per token; the paper's
  // setting of as many slots as tokens gives one (the summary's measured figure uses the real T).
  return soft ? 1.0 : router->experts_per_token();
}

int64_t MoELayerImpl::params_active_per_token() const {
  // Every Soft MoE token mixes the outputs of every expert.
  const double experts_used = soft ? static_cast<double>(options.num_experts()) : router->experts_per_token();
  return count_parameters(soft ? static_cast<const torch::nn::Module&>(*soft) : *router) +
         experts->params_active_per_token(experts_used) + (shared ? shared->params_total() : 0);
}

int64_t MoELayerImpl::flops_per_token() const { return flops_per_token_at(nominal_experts_per_token()); }

int64_t MoELayerImpl::flops_per_token_at(double experts_per_token) const {
  // RMS-normalising the router's input: a square and an add per feature, then a multiply.
  const int64_t router_norm = options.router_norm() == "rms" ? 3 * options.model_dim() : 0;
  return (soft ? soft->flops_per_token() : router->flops_per_token()) + router_norm +
         experts->flops_per_token(experts_per_token) + (shared ? shared->flops_per_token() : 0);
}

nlohmann::json MoELayerImpl::accounting() const {
  const double ffn_params = static_cast<double>(
      FfnExpertBank::params_for(FfnExpertBankOptions(options.model_dim(), options.expert_hidden(), options.num_experts())));
  return {{"router", options.router()},
          {"expert_parallel_ranks", exchange ? exchange->communicator().world_size() : 1},
          {"bank", options.bank()},
          {"experts", options.num_experts()},
          {"params_total", params_total()},
          {"params_shared", experts->params_shared() + (shared ? shared->params_total() : 0)},
          {"params_per_expert_unique", experts->params_per_expert_unique()},
          {"params_active_per_token", params_active_per_token()},
          {"flops_per_token", flops_per_token()},
          {"flops_per_forward", experts->flops_per_forward()},
          {"shared_experts", options.shared_experts()},
          {"null_experts", options.null_experts()},
          {"compression_vs_ffn", ffn_params / static_cast<double>(bank_params_total())}};
}

void MoELayerImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::MoELayer(dim=" << options.model_dim() << ", experts=" << options.num_experts()
         << ", k=" << (soft ? 0 : options.k()) << ", expert_hidden=" << options.expert_hidden() << ", router=" << options.router()
         << ", bank=" << options.bank() << ", capacity_factor=" << options.capacity_factor() << ")";
}

}  // namespace moelab
