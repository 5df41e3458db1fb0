// Translation (model.task = "translation") on a sentence-aligned corpus directory: subwords from a
// SentencePiece model (given, or trained on the training text and kept in the run directory),
// length-grouped batches under train.batch_tokens, label-smoothed teacher forcing, and evaluation by
// loss and by corpus BLEU / chrF of decoded, detokenised translations (as sacreBLEU computes them).
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <unistd.h>

#include <filesystem>

#include "moelab/data/parallel_corpus.h"
#include "moelab/data/subword_model.h"
#include "moelab/data/translation_batches.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/bleu.h"
#include "moelab/train/chrf.h"
#include "moelab/train/training_task.h"
#include "moelab/train/translation_decoding.h"
#include "moelab/train/translation_run.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kSourceModelFile = "spm_source.model";
constexpr const char* kTargetModelFile = "spm_target.model";

struct Subwords {
  SubwordModel source, target;
};

// A resumed run keeps the models it started with; otherwise data.spm (and data.spm_target), or a
// joint model trained now on the training text.
Subwords load_subwords(const Config& config, const ParallelCorpusFiles& files, const std::string& run_directory,
                       bool resuming) {
  const std::string saved_source = run_directory + "/" + kSourceModelFile;
  if (resuming && file_exists(saved_source))
    return {SubwordModel::load(saved_source), SubwordModel::load(run_directory + "/" + kTargetModelFile)};
  const auto& given = config.get_string("data.spm");
  if (!given.empty()) {
    const auto& given_target = config.get_string("data.spm_target");
    auto source = SubwordModel::load(given);
    return {source, given_target.empty() ? source : SubwordModel::load(given_target)};
  }
  const auto scratch = std::filesystem::temp_directory_path() /
                       fmt::format("moelab-spm-{}-{}", ::getpid(), Clock::now().time_since_epoch().count());
  std::filesystem::create_directories(scratch);
  SubwordTrainOptions options;
  options.inputs = {files.train_source, files.train_target};
  options.vocab_size = config.get_int("data.spm_vocab");
  options.type = config.get_string("data.spm_type");
  options.output = (scratch / "joint.model").string();
  try {
    train_subword_model(options);
  } catch (...) {
    std::filesystem::remove_all(scratch);
    throw;
  }
  auto model = SubwordModel::from_bytes(read_text_file(options.output), "joint SentencePiece model");
  std::filesystem::remove_all(scratch);
  return {model, model};
}

std::vector<SentencePairIds> encode_pairs(const ParallelText& text, const Subwords& subwords) {
  std::vector<SentencePairIds> pairs;
  pairs.reserve(text.source.size());
  for (size_t i = 0; i < text.source.size(); ++i) {
    SentencePairIds pair{subwords.source.encode(text.source[i]), subwords.target.encode(text.target[i])};
    pair.source.push_back(SubwordModel::kEosId);
    pairs.push_back(std::move(pair));
  }
  return pairs;
}

class TranslationTask : public TrainingTask {
 public:
  explicit TranslationTask(const TaskSetup& setup)
      : config_(setup.config),
        device_(setup.device),
        run_directory_(setup.run_directory),
        files_(find_parallel_corpus(config_.get_string("data.corpus"), config_.get_string("data.src_lang"),
                                    config_.get_string("data.tgt_lang"), config_.get_string("data.test"))),
        train_text_(read_parallel_text(files_.train_source, files_.train_target)),
        valid_text_(read_parallel_text(files_.valid_source, files_.valid_target)),
        subwords_(load_subwords(config_, files_, run_directory_, setup.saved_vocabulary.has_value())) {
    if (!files_.test_source.empty()) test_text_ = read_parallel_text(files_.test_source, files_.test_target);
    if (config_.get_bool("model.share_embeddings") && subwords_.source.bytes() != subwords_.target.bytes())
      fail("model.share_embeddings = true needs one SentencePiece model for both languages, but data.spm_target "
           "names another; set model.share_embeddings = false");
    // Built on the CPU after the data (the SentencePiece training draws no torch random numbers).
    model_ = make_translation_model(config_, subwords_.source.size(), subwords_.target.size());
    for (auto& pair : encode_pairs(train_text_, subwords_)) {
      // A pair the learned positions cannot hold is left out of training (and counted).
      if (!fits(pair)) {
        ++dropped_train_pairs_;
        continue;
      }
      train_pairs_.push_back(std::move(pair));
    }
    if (train_pairs_.empty())
      fail("{}: no training pair fits model.context = {}", files_.train_source, model_->max_positions());
    valid_pairs_ = encode_pairs(valid_text_, subwords_);
    if (!test_text_.source.empty()) test_pairs_ = encode_pairs(test_text_, subwords_);
    batches_ = batches_by_length(train_pairs_, config_.get_int("train.batch_tokens"),
                                 static_cast<uint64_t>(config_.get_int("train.seed")));
    for (const auto& batch : batches_) {
      int64_t tokens = 0;
      for (const int64_t i : batch)
        tokens += static_cast<int64_t>(train_pairs_[i].source.size() + train_pairs_[i].target.size() + 1);
      batch_tokens_.push_back(tokens);
      epoch_tokens_ += tokens;
    }
  }

  torch::nn::Module& model() override { return *model_; }
  std::vector<NamedMoELayer> moe_layers() const override { return model_->moe_layers(); }
  void mask_gradients(uint64_t seed, int64_t step) override { model_->mask_gradients(seed, step); }
  std::vector<LayerCost> costs() const override { return model_->costs(); }
  std::string vocabulary_text() const override {
    return fmt::format("sentencepiece source {} ({} pieces), target {} ({} pieces)\n", kSourceModelFile,
                       subwords_.source.size(), kTargetModelFile, subwords_.target.size());
  }
  std::map<std::string, std::string> run_files() const override {
    return {{kSourceModelFile, subwords_.source.bytes()}, {kTargetModelFile, subwords_.target.bytes()}};
  }
  std::string selection_figure() const override { return "valid_bleu"; }

  int64_t batches_per_epoch() const override { return static_cast<int64_t>(batches_.size()); }

  int64_t micro_batches_at(int64_t step, int64_t configured) override {
    return micro_batches_for(static_cast<int64_t>(batch_at(step).size()), configured);
  }

  StepForward forward(const StepSlice& slice) override {
    const auto indices = micro_batch_of(batch_at(slice.step), slice);
    const auto batch = make_translation_batch(train_pairs_, indices, special_ids(), device_);
    const auto encoded = model_->encode(batch.source, batch.source_lengths);
    const auto decoded = model_->decode(encoded, batch.target_input, batch.target_padding);
    StepForward out;
    out.loss = target_loss(decoded.features, batch, config_.get_float("train.label_smoothing"));
    combine_routing(encoded.moe, decoded.moe, out);
    out.tokens = batch.source_tokens + batch.target_tokens;
    return out;
  }

  int64_t tokens_through(int64_t step) const override {
    const int64_t count = batches_per_epoch();
    const int64_t epochs = step / count, rest = step % count;
    int64_t tokens = epochs * epoch_tokens_;
    if (rest > 0) {
      const auto order = epoch_order(count, seed(), epochs);
      for (int64_t i = 0; i < rest; ++i) tokens += batch_tokens_[static_cast<size_t>(order[static_cast<size_t>(i)])];
    }
    return tokens;
  }

  SplitEvaluation evaluate(const std::string& split, std::vector<RoutingStatsAccumulator>* routing) override {
    const bool was_training = model_->is_training();
    model_->eval();
    torch::NoGradGuard no_grad;
    const bool test = split == "test";
    const auto& all_pairs = test ? test_pairs_ : valid_pairs_;
    const auto& text = test ? test_text_ : valid_text_;
    // train.eval_max_tokens: the first sentences up to that many target tokens.
    const int64_t max_tokens = config_.get_int("train.eval_max_tokens");
    size_t count = all_pairs.size();
    if (max_tokens > 0) {
      int64_t tokens = 0;
      for (count = 0; count < all_pairs.size() && tokens < max_tokens; ++count)
        tokens += static_cast<int64_t>(all_pairs[count].target.size()) + 1;
    }
    const std::vector<SentencePairIds> pairs(all_pairs.begin(), all_pairs.begin() + static_cast<std::ptrdiff_t>(count));
    const std::vector<std::string> references(text.target.begin(), text.target.begin() + static_cast<std::ptrdiff_t>(count));

    // Teacher-forced loss, and the routing statistics of every MoE layer, over the pairs the model's
    // positions hold (all of them but for learned positions shorter than a pair).
    std::vector<SentencePairIds> fitting;
    for (const auto& pair : pairs)
      if (fits(pair)) fitting.push_back(pair);
    double loss_sum = 0;
    int64_t target_tokens = 0, source_tokens = 0;
    for (const auto& indices : batches_by_length(fitting, config_.get_int("train.batch_tokens"), /*seed=*/0)) {
      const auto batch = make_translation_batch(fitting, indices, special_ids(), device_);
      const auto encoded = model_->encode(batch.source, batch.source_lengths);
      const auto decoded = model_->decode(encoded, batch.target_input, batch.target_padding);
      loss_sum += target_loss(decoded.features, batch, 0.0).item<double>() * static_cast<double>(batch.target_tokens);
      target_tokens += batch.target_tokens;
      source_tokens += batch.source_tokens;
      if (routing) {
        std::vector<RoutingStats> layers = encoded.moe.routing;
        layers.insert(layers.end(), decoded.moe.routing.begin(), decoded.moe.routing.end());
        if (routing->empty()) routing->resize(layers.size());
        for (size_t i = 0; i < layers.size(); ++i) (*routing)[i].add(layers[i]);
      }
    }
    const double loss = target_tokens > 0 ? loss_sum / static_cast<double>(target_tokens) : 0.0;
    nlohmann::json figures = {{split + "_loss", loss}, {split + "_ppl", std::exp(loss)}};
    if (fitting.size() != pairs.size()) figures[split + "_pairs_without_loss"] = pairs.size() - fitting.size();

    std::vector<std::vector<int64_t>> sources;
    for (const auto& pair : pairs) sources.push_back(pair.source);
    // Validation decodes greedily (it runs during training and picks the best checkpoint); the test
    // split decodes with decode.beam, and greedily too for the comparison and the latencies.
    auto search = search_options(config_);
    if (!test) search.beam = 1;
    const auto translations = decode(sources, search, figures, split + "_ms_per_sentence");
    add_scores(figures, split, "", translations, references);
    if (test) {
      write_translations(fmt::format("test.beam{}.txt", search.beam), translations);
      if (search.beam != 1) {
        auto greedy = search;
        greedy.beam = 1;
        const auto greedy_translations = decode(sources, greedy, figures, "test_ms_per_sentence_greedy");
        add_scores(figures, split, "_greedy", greedy_translations, references);
        write_translations("test.beam1.txt", greedy_translations);
      }
      measure_latency(sources, figures);
    }
    figures["bleu_signature"] = bleu_signature();
    figures["chrf_signature"] = chrf_signature();
    if (was_training) model_->train();
    return {figures, source_tokens + target_tokens};
  }

  bool has_split(const std::string& split) const override {
    return split == "valid" || (split == "test" && !test_pairs_.empty());
  }
  std::string headline(const nlohmann::json& figures) const override {
    for (const auto& [key, value] : figures.items())
      if (key.size() > 5 && key.compare(key.size() - 5, 5, "_bleu") == 0)
        return fmt::format("BLEU {:.2f}", value.get<double>());
    return "";
  }
  bool reports_perplexity() const override { return false; }  // the label-smoothed loss is no perplexity

  std::string describe_data() const override {
    const auto test = has_split("test") ? fmt::format("{} test", test_pairs_.size()) : std::string("no test set");
    return fmt::format("corpus {} ({} -> {}): {} training pairs ({} longer than the model's positions left out), "
                       "{} validation, {}; subwords {} / {}; {} batches of up to {} tokens per epoch",
                       config_.get_string("data.corpus"), config_.get_string("data.src_lang"),
                       config_.get_string("data.tgt_lang"), train_pairs_.size(), dropped_train_pairs_,
                       valid_pairs_.size(), test, subwords_.source.size(), subwords_.target.size(),
                       batches_.size(), config_.get_int("train.batch_tokens"));
  }

  nlohmann::json summary_fields() const override {
    // FLOPs per token of the rows' own side (encoder per source token, decoder and output layer per
    // target token), weighted by the training data's mean lengths.
    double encoder_flops = 0, decoder_flops = 0;
    for (const auto& row : model_->costs())
      (row.name.rfind("encoder", 0) == 0 || row.name.rfind("source", 0) == 0 ? encoder_flops : decoder_flops) +=
          static_cast<double>(row.flops);
    double source_tokens = 0, target_tokens = 0;
    for (const auto& pair : train_pairs_) {
      source_tokens += static_cast<double>(pair.source.size());
      target_tokens += static_cast<double>(pair.target.size() + 1);
    }
    const double flops = (encoder_flops * source_tokens + decoder_flops * target_tokens) / (source_tokens + target_tokens);
    return {{"corpus", config_.get_string("data.corpus")},
            {"languages", config_.get_string("data.src_lang") + "-" + config_.get_string("data.tgt_lang")},
            {"test_file", files_.test_source},
            {"train_pairs", train_pairs_.size()},
            {"train_pairs_left_out", dropped_train_pairs_},
            {"source_vocab", subwords_.source.size()},
            {"target_vocab", subwords_.target.size()},
            {"flops_per_source_target_token", flops},
            {"tokens_per_step", static_cast<double>(epoch_tokens_) / static_cast<double>(batches_.size())},
            {"decode", {{"beam", config_.get_int("decode.beam")},
                        {"alpha", config_.get_float("decode.alpha")},
                        {"max_ratio", config_.get_float("decode.max_ratio")}}}};
  }

 private:
  bool fits(const SentencePairIds& pair) const {
    const int64_t limit = model_->max_positions();
    return limit <= 0 || (static_cast<int64_t>(pair.source.size()) <= limit &&
                          static_cast<int64_t>(pair.target.size()) + 1 <= limit);
  }
  uint64_t seed() const { return static_cast<uint64_t>(config_.get_int("train.seed")); }
  // The pairs of step `step`'s batch (the epoch's order is cached).
  const std::vector<int64_t>& batch_at(int64_t step) {
    const int64_t count = batches_per_epoch();
    const int64_t epoch = (step - 1) / count;
    if (epoch != order_epoch_) {
      order_ = epoch_order(count, seed(), epoch);
      order_epoch_ = epoch;
    }
    return batches_[static_cast<size_t>(order_[static_cast<size_t>((step - 1) % count)])];
  }
  static SpecialIds special_ids() { return {SubwordModel::kPadId, SubwordModel::kBosId, SubwordModel::kEosId}; }

  // Mean loss over the batch's real target tokens.
  torch::Tensor target_loss(const torch::Tensor& features, const TranslationBatch& batch, double smoothing) {
    const auto real = batch.target_padding.logical_not().reshape({-1}).nonzero().squeeze(1);
    const auto flat = features.reshape({-1, features.size(-1)}).index_select(0, real);
    const auto targets = batch.target_output.reshape({-1}).index_select(0, real);
    return label_smoothed_nll(model_->log_probs(flat), targets, smoothing);
  }

  // Encoder layers first, then the decoder's, as moe_layers() lists them. The logged loss terms are
  // the mean over layers, comparable with one layer's.
  static void combine_routing(const RoutingOutput& encoder, const RoutingOutput& decoder, StepForward& out) {
    out.routing = encoder.routing;
    out.routing.insert(out.routing.end(), decoder.routing.begin(), decoder.routing.end());
    out.aux_loss = torch::zeros({}, out.loss.options());
    for (const auto* part : {&encoder, &decoder}) {
      if (part->aux_loss.defined()) out.aux_loss = out.aux_loss + part->aux_loss;
      for (const auto& [name, value] : part->loss_terms)
        out.loss_terms[name] = out.loss_terms.count(name) ? out.loss_terms[name] + value : value;
    }
    for (auto& [name, value] : out.loss_terms) value = value / static_cast<double>(out.routing.size());
  }

  std::vector<std::string> decode(const std::vector<std::vector<int64_t>>& sources, const SearchOptions& search,
                                  nlohmann::json& figures, const std::string& timing_key) {
    const auto started = Clock::now();
    const auto hypotheses = translate_ids(*model_, sources, search, config_.get_int("train.batch_tokens"), device_);
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    if (!sources.empty()) figures[timing_key] = seconds * 1e3 / static_cast<double>(sources.size());
    std::vector<std::string> out;
    for (const auto& hypothesis : hypotheses) out.push_back(subwords_.target.decode(hypothesis.tokens));
    return out;
  }

  static void add_scores(nlohmann::json& figures, const std::string& split, const std::string& suffix,
                         const std::vector<std::string>& translations, const std::vector<std::string>& references) {
    const auto bleu = corpus_bleu(translations, references);
    figures[split + "_bleu" + suffix] = bleu.score;
    figures[split + "_bleu_line" + suffix] = format_bleu_line(bleu);
    figures[split + "_chrf" + suffix] = corpus_chrf(translations, references).score;
  }

  // One sentence at a time (batch 1), greedy and beam: what a user waiting for one translation sees.
  void measure_latency(const std::vector<std::vector<int64_t>>& sources, nlohmann::json& figures) {
    const size_t n = std::min<size_t>(sources.size(), 20);
    if (n == 0) return;
    for (const int64_t beam : {int64_t{1}, config_.get_int("decode.beam")}) {
      auto search = search_options(config_);
      search.beam = beam;
      const auto started = Clock::now();
      for (size_t i = 0; i < n; ++i) translate_ids(*model_, {sources[i]}, search, config_.get_int("train.batch_tokens"), device_);
      const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
      figures[fmt::format("latency_ms_beam{}", beam)] = seconds * 1e3 / static_cast<double>(n);
    }
  }

  void write_translations(const std::string& name, const std::vector<std::string>& lines) const {
    if (run_directory_.empty() || !std::filesystem::is_directory(run_directory_)) return;
    std::string text;
    for (const auto& line : lines) text += line + "\n";
    write_file_atomically(run_directory_ + "/" + name, text);
  }

  const Config& config_;
  torch::Device device_;
  std::string run_directory_;
  ParallelCorpusFiles files_;
  ParallelText train_text_, valid_text_, test_text_;
  Subwords subwords_;
  TranslationModelPtr model_;
  std::vector<SentencePairIds> train_pairs_, valid_pairs_, test_pairs_;
  int64_t dropped_train_pairs_ = 0;
  std::vector<std::vector<int64_t>> batches_;
  std::vector<int64_t> batch_tokens_;
  int64_t epoch_tokens_ = 0;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

}  // namespace

std::unique_ptr<TrainingTask> make_translation_task(const TaskSetup& setup) {
  return std::make_unique<TranslationTask>(setup);
}

}  // namespace moelab
