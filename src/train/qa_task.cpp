// Extractive QA on SQuAD v1.1 files (see supervised_task.h). The model reads
// question <sep> context, as the BiLSTM gating study concatenated them.
#include <fmt/format.h>

#include <algorithm>

#include "moelab/data/packed_batches.h"
#include "moelab/data/singleton_unk.h"
#include "moelab/device/device.h"
#include "moelab/data/squad.h"
#include "moelab/data/word_overlap.h"
#include "moelab/models/model_from_config.h"
#include "moelab/models/span_extractor.h"
#include "moelab/train/qa_metrics.h"
#include "moelab/train/supervised_task.h"

namespace moelab {

namespace {

constexpr const char* kSeparator = "<sep>";

struct QaSplit {
  SquadData data;
  std::vector<std::vector<int64_t>> input_ids;  // question, <sep>, context
  std::vector<int64_t> lengths;
  std::vector<std::vector<float>> overlap;  // with model.qa_word_overlap: per example, word_overlap in input order
  int64_t tokens = 0;
};

struct QaBatch {
  PackedBatch packed;
  SpanInputs inputs;
  torch::Tensor gold_start, gold_end;  // [B]
};

class QaTask : public SupervisedTask {
 public:
  QaTask(const Config& config, const std::optional<std::string>& saved_vocabulary)
      : lowercase_(config.get_bool("data.lowercase")),
        word_overlap_(config.get_bool("model.qa_word_overlap")),
        batch_(config.get_int("train.batch")),
        max_answer_(config.get_int("data.max_answer_tokens")) {
    SquadOptions options;
    options.max_context_tokens = config.get_int("data.max_context_tokens");
    options.max_question_tokens = config.get_int("data.max_question_tokens");
    options.max_answer_tokens = max_answer_;
    splits_["train"].data = read_squad_file(config.get_string("data.train"), options);
    // Long gold answers stay in evaluation: dropping them would flatter the scores.
    options.max_answer_tokens = 0;
    splits_["valid"].data = read_squad_file(config.get_string("data.valid"), options);
    if (!config.get_string("data.test").empty())
      splits_["test"].data = read_squad_file(config.get_string("data.test"), options);

    std::unordered_map<std::string, int64_t> train_counts;
    // Each question carries its paragraph: counted once per paragraph, a word written once in the
    // text is a singleton however many questions its paragraph has.
    std::unordered_map<std::string, int64_t> text_counts;
    std::unordered_set<std::string> paragraphs_seen;
    std::unordered_set<std::string> other_words;
    for (const auto& [name, split] : splits_) {
      const bool is_train = name == "train";  // C++17 lambdas cannot capture a structured binding
      for (const auto& example : split.data.examples) {
        const bool new_paragraph = is_train && paragraphs_seen.insert(example.context).second;
        auto note = [&](const std::string& token, bool once_in_text) {
          const auto word = lookup_form(token, lowercase_);
          if (!is_train) {
            other_words.insert(word);
            return;
          }
          ++train_counts[word];
          if (once_in_text) ++text_counts[word];
        };
        for (const auto& token : example.question_tokens) note(token, true);
        for (const auto& token : example.context_tokens) note(token.text, new_paragraph);
      }
    }
    vocabulary_ = task_vocabulary_for_run(config, saved_vocabulary, train_counts, other_words, {kSeparator});
    singleton_unk_ = SingletonUnk(vocabulary_.words, text_counts, config.get_float("data.singleton_unk"));
    for (auto& [name, split] : splits_)
      for (const auto& example : split.data.examples) {
        std::vector<int64_t> ids;
        for (const auto& token : example.question_tokens) ids.push_back(word_id(token));
        ids.push_back(vocabulary_.words.id(kSeparator));
        for (const auto& token : example.context_tokens) ids.push_back(word_id(token.text));
        split.tokens += static_cast<int64_t>(ids.size());
        split.lengths.push_back(static_cast<int64_t>(ids.size()));
        split.input_ids.push_back(std::move(ids));
        if (word_overlap_) split.overlap.push_back(overlap_in_input_order(example));
      }
    SpanExtractorOptions model_options(encoder_options(config, vocabulary_.words.size()));
    model_options.attention(config.get_string("model.qa_attention"));
    if (word_overlap_) model_options.encoder().token_features(kWordOverlapFeatures);
    measure_lengths(splits_.at("train").data, model_options);
    model_ = SpanExtractor(model_options);
    if (vocabulary_.embeddings.defined()) model_->encoder->set_embeddings(vocabulary_.embeddings);
  }

  torch::nn::Module& model() override { return *model_; }
  BiLstmMoEEncoder& encoder() override { return model_->encoder; }
  const std::vector<int64_t>& train_lengths() const override { return splits_.at("train").lengths; }
  bool has_split(const std::string& split) const override { return splits_.count(split) > 0; }

  TaskForward forward(const std::vector<int64_t>& examples) override {
    auto batch = make_batch(splits_.at("train"), examples, module_device(*model_));
    batch.inputs.ids = singleton_unk_.apply(batch.inputs.ids);
    TaskForward out;
    auto span = model_(batch.inputs);
    out.encoded = std::move(span.encoded);
    out.loss = SpanExtractorImpl::loss(span.logits, batch.gold_start, batch.gold_end);
    out.tokens = batch.packed.tokens();
    return out;
  }

  nlohmann::json evaluate(const std::string& name, std::vector<RoutingStatsAccumulator>* routing) override {
    const auto& split = splits_.at(name);
    torch::NoGradGuard no_grad;
    model_->eval();
    QaScorer scorer;
    double loss_sum = 0;
    for (const auto& examples : length_grouped_batches(split.lengths, batch_, -1)) {
      const auto batch = make_batch(split, examples, module_device(*model_));
      const auto span = model_(batch.inputs);
      if (routing) add_routing(*routing, span.encoded.routing);
      const auto& logits = span.logits;
      loss_sum += SpanExtractorImpl::loss(logits, batch.gold_start, batch.gold_end).item<double>() *
                  static_cast<double>(examples.size());
      const auto spans = best_spans(logits, max_answer_).to(torch::kCPU).contiguous();
      const auto* best = spans.data_ptr<int64_t>();
      for (size_t b = 0; b < examples.size(); ++b) {
        const auto& example = split.data.examples[static_cast<size_t>(examples[b])];
        const int64_t start = best[2 * b], end = best[2 * b + 1];
        const auto& first = example.context_tokens[static_cast<size_t>(start)];
        const auto& last = example.context_tokens[static_cast<size_t>(end)];
        const auto prediction =
            example.context.substr(static_cast<size_t>(first.begin), static_cast<size_t>(last.end - first.begin));
        scorer.add(prediction, example.answers, start, end, example.answer_start, example.answer_end);
      }
    }
    model_->train();
    return {{name + "_em", scorer.exact_match()},
            {name + "_f1", scorer.f1()},
            {name + "_start_acc", scorer.start_accuracy()},
            {name + "_end_acc", scorer.end_accuracy()},
            {name + "_loss", loss_sum / static_cast<double>(std::max<int64_t>(1, scorer.count()))},
            {name + "_questions", scorer.count()}};
  }

  std::vector<LayerCost> costs() const override { return model_->costs(); }

  std::string headline(const nlohmann::json& f) const override {
    return fmt::format("EM {:.2f}, F1 {:.2f}", f.value("valid_em", 0.0), f.value("valid_f1", 0.0));
  }

  std::string selection_figure() const override { return "valid_f1"; }

  std::string describe_data() const override {
    const auto& train = splits_.at("train").data;
    return fmt::format(
        "qa: {} train questions kept of {} (dropped: {} long contexts, {} long questions, {} long answers, {} "
        "unanswered), {} valid{}; vocabulary {}{}",
        train.examples.size(), train.questions, train.dropped_long_context, train.dropped_long_question,
        train.dropped_long_answer, train.dropped_no_answer, splits_.at("valid").data.examples.size(),
        has_split("test") ? fmt::format(", {} test", splits_.at("test").data.examples.size()) : "",
        vocabulary_.words.size(),
        vocabulary_.embeddings.defined() ? fmt::format("; GloVe vectors for {}", vocabulary_.embeddings_found) : "") +
           (train.provenance.empty() ? "" : "; " + train.provenance);
  }

  nlohmann::json data_summary() const override {
    nlohmann::json data = {{"vocab_size", vocabulary_.words.size()}, {"singleton_words", singleton_unk_.singletons()}};
    if (vocabulary_.embeddings.defined()) data["embeddings_found"] = vocabulary_.embeddings_found;
    for (const auto& [name, split] : splits_)
      data[name] = {{"questions_read", split.data.questions},
                    {"questions_kept", split.data.examples.size()},
                    {"dropped_long_context", split.data.dropped_long_context},
                    {"dropped_long_question", split.data.dropped_long_question},
                    {"dropped_long_answer", split.data.dropped_long_answer},
                    {"dropped_no_answer", split.data.dropped_no_answer},
                    {"answer_text_mismatch", split.data.answer_text_mismatch},
                    {"tokens", split.tokens}};
    for (const auto& [name, split] : splits_)
      if (!split.data.provenance.empty()) data[name]["provenance"] = split.data.provenance;
    return data;
  }

 private:
  int64_t word_id(const std::string& token) const { return vocabulary_.words.id(lookup_form(token, lowercase_)); }

  // question, <sep> (no features), context: the order of input_ids.
  static std::vector<float> overlap_in_input_order(const QaExample& example) {
    std::vector<std::string> context;
    for (const auto& token : example.context_tokens) context.push_back(token.text);
    const auto overlap = word_overlap(example.question_tokens, context);
    std::vector<float> out = overlap.question;
    out.insert(out.end(), kWordOverlapFeatures, 0.0F);
    out.insert(out.end(), overlap.context.begin(), overlap.context.end());
    return out;
  }

  // Tensors on `device`, except the packed batch sizes, which LibTorch's packed LSTMs read on the CPU.
  QaBatch make_batch(const QaSplit& split, const std::vector<int64_t>& examples, const torch::Device& device) const {
    QaBatch batch;
    std::vector<const std::vector<int64_t>*> inputs;
    int64_t longest_context = 0, longest_question = 0;
    for (const auto e : examples) {
      inputs.push_back(&split.input_ids[static_cast<size_t>(e)]);
      const auto& example = split.data.examples[static_cast<size_t>(e)];
      longest_context = std::max<int64_t>(longest_context, static_cast<int64_t>(example.context_tokens.size()));
      longest_question = std::max<int64_t>(longest_question, static_cast<int64_t>(example.question_tokens.size()));
    }
    batch.packed = pack_sequences(inputs);
    const auto rows = static_cast<int64_t>(examples.size());
    std::vector<int64_t> context_rows(static_cast<size_t>(rows * longest_context), -1),
        question_rows(static_cast<size_t>(rows * longest_question), -1), starts, ends;
    const bool spelled = static_cast<bool>(model_->encoder->chars);
    std::vector<const std::string*> words(spelled ? static_cast<size_t>(batch.packed.tokens()) : 0);
    static const std::string separator = kSeparator;
    torch::Tensor features;  // [N, kWordOverlapFeatures] with model.qa_word_overlap
    if (word_overlap_) features = torch::zeros({batch.packed.tokens(), kWordOverlapFeatures});
    for (int64_t b = 0; b < rows; ++b) {
      const auto& example = split.data.examples[static_cast<size_t>(examples[static_cast<size_t>(b)])];
      const auto questions = static_cast<int64_t>(example.question_tokens.size());
      const auto& sequence_rows = batch.packed.rows[static_cast<size_t>(b)];
      auto row = [&](int64_t t) { return sequence_rows[static_cast<size_t>(t)]; };
      for (int64_t t = 0; t < questions; ++t) {
        question_rows[static_cast<size_t>(b * longest_question + t)] = row(t);
        if (spelled) words[static_cast<size_t>(row(t))] = &example.question_tokens[static_cast<size_t>(t)];
      }
      if (spelled) words[static_cast<size_t>(row(questions))] = &separator;
      for (int64_t t = 0; t < static_cast<int64_t>(example.context_tokens.size()); ++t) {
        context_rows[static_cast<size_t>(b * longest_context + t)] = row(questions + 1 + t);
        if (spelled) words[static_cast<size_t>(row(questions + 1 + t))] = &example.context_tokens[static_cast<size_t>(t)].text;
      }
      if (word_overlap_) {
        const auto& overlap = split.overlap[static_cast<size_t>(examples[static_cast<size_t>(b)])];
        auto* out = features.data_ptr<float>();
        for (size_t t = 0; t < sequence_rows.size(); ++t)
          std::copy_n(overlap.begin() + static_cast<std::ptrdiff_t>(t * kWordOverlapFeatures), kWordOverlapFeatures,
                      out + sequence_rows[t] * kWordOverlapFeatures);
      }
      starts.push_back(example.answer_start);
      ends.push_back(example.answer_end);
    }
    batch.inputs.ids = batch.packed.values.to(device);
    batch.inputs.batch_sizes = batch.packed.batch_sizes;
    if (spelled) batch.inputs.bytes = word_bytes(words).to(device);
    if (word_overlap_) batch.inputs.features = features.to(device);
    batch.inputs.context_rows = torch::tensor(context_rows, torch::kLong).view({rows, longest_context}).to(device);
    batch.inputs.question_rows = torch::tensor(question_rows, torch::kLong).view({rows, longest_question}).to(device);
    batch.gold_start = torch::tensor(starts, torch::kLong).to(device);
    batch.gold_end = torch::tensor(ends, torch::kLong).to(device);
    return batch;
  }

  // The length profile that the FLOPs count and the character features' cost need.
  static void measure_lengths(const SquadData& data, SpanExtractorOptions& options) {
    double question = 0, context = 0, bytes = 0, words = 0;
    auto add_word = [&](const std::string& word) {
      bytes += static_cast<double>(std::min<size_t>(word.size(), kMaxWordBytes));
      words += 1;
    };
    for (const auto& example : data.examples) {
      question += static_cast<double>(example.question_tokens.size());
      context += static_cast<double>(example.context_tokens.size());
      for (const auto& token : example.question_tokens) add_word(token);
      for (const auto& token : example.context_tokens) add_word(token.text);
    }
    if (data.examples.empty()) return;
    const auto questions = static_cast<double>(data.examples.size());
    options.mean_question_tokens(question / questions);
    options.context_share(context / (context + question + questions));
    if (options.encoder().chars()) options.encoder().chars()->mean_word_bytes(bytes / words);
  }

  bool lowercase_;
  bool word_overlap_;
  int64_t batch_;
  int64_t max_answer_;
  std::map<std::string, QaSplit> splits_;
  SingletonUnk singleton_unk_;
  SpanExtractor model_{nullptr};
};

}  // namespace

std::unique_ptr<SupervisedTask> make_qa_task(const Config& config, const std::optional<std::string>& saved_vocabulary) {
  return std::make_unique<QaTask>(config, saved_vocabulary);
}

}  // namespace moelab
