// BiDAF's attention flow against a loop over positions written from the paper's equations, its
// blindness to padding, and the QA model built on it scoring a question the same in any batch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/config/config.h"
#include "moelab/data/packed_batches.h"
#include "moelab/layers/context_question_attention.h"
#include "moelab/models/model_from_config.h"
#include "moelab/models/span_extractor.h"

namespace moelab {
namespace {

// The output for one unpadded example, position by position: c [C, D], q [Q, D] -> [C, 4D].
torch::Tensor attention_by_loops(const ContextQuestionAttentionImpl& layer, const torch::Tensor& c,
                                 const torch::Tensor& q) {
  const int64_t contexts = c.size(0), questions = q.size(0);
  auto score = torch::zeros({contexts, questions}, torch::kDouble);
  for (int64_t i = 0; i < contexts; ++i)
    for (int64_t j = 0; j < questions; ++j)
      score[i][j] = (layer.w_context * c[i]).sum() + (layer.w_question * q[j]).sum() +
                    (layer.w_product * c[i] * q[j]).sum();
  std::vector<torch::Tensor> rows;
  auto best = torch::zeros({contexts}, torch::kDouble);
  for (int64_t i = 0; i < contexts; ++i) best[i] = score[i].max();
  const auto beta = torch::softmax(best, 0);
  auto summary = torch::zeros({c.size(1)}, torch::kDouble);
  for (int64_t i = 0; i < contexts; ++i) summary += beta[i] * c[i];
  for (int64_t i = 0; i < contexts; ++i) {
    const auto alpha = torch::softmax(score[i], 0);
    auto read = torch::zeros({c.size(1)}, torch::kDouble);
    for (int64_t j = 0; j < questions; ++j) read += alpha[j] * q[j];
    rows.push_back(torch::cat({c[i], read, c[i] * read, c[i] * summary}));
  }
  return torch::stack(rows);
}

TEST(ContextQuestionAttention, MatchesTheEquationsPositionByPositionAndIgnoresPadding) {
  torch::manual_seed(11);
  ContextQuestionAttention layer(6);
  layer->to(torch::kDouble);
  const std::vector<int64_t> contexts = {5, 3}, questions = {2, 4};
  const auto context = torch::randn({2, 5, 6}, torch::kDouble);
  const auto question = torch::randn({2, 4, 6}, torch::kDouble);
  auto context_mask = torch::zeros({2, 5}, torch::kBool), question_mask = torch::zeros({2, 4}, torch::kBool);
  for (int64_t b = 0; b < 2; ++b) {
    context_mask[b].narrow(0, 0, contexts[b]).fill_(true);
    question_mask[b].narrow(0, 0, questions[b]).fill_(true);
  }
  const auto out = layer(context, context_mask, question, question_mask);
  ASSERT_EQ(out.sizes(), torch::IntArrayRef({2, 5, 24}));
  for (int64_t b = 0; b < 2; ++b) {
    const auto c = context[b].narrow(0, 0, contexts[b]), q = question[b].narrow(0, 0, questions[b]);
    const auto expected = attention_by_loops(*layer, c, q);
    EXPECT_TRUE(torch::allclose(out[b].narrow(0, 0, contexts[b]), expected, 1e-10, 1e-12)) << b;
    // The same example alone, unpadded: padding (here random, not zero) changed nothing.
    const auto alone = layer(c.unsqueeze(0), torch::ones({1, contexts[b]}, torch::kBool), q.unsqueeze(0),
                             torch::ones({1, questions[b]}, torch::kBool));
    EXPECT_TRUE(torch::allclose(out[b].narrow(0, 0, contexts[b]), alone[0], 1e-10, 1e-12)) << b;
  }
  EXPECT_FALSE(out.isnan().any().item<bool>());
}

TEST(SpanExtractor, BidafWithCharactersScoresAQuestionTheSameInAnyBatch) {
  torch::manual_seed(4);
  auto config = Config::defaults();
  for (const auto* a : {"model.task=qa", "data.train=t.json", "data.valid=v.json", "model.embed=8", "model.hidden=6",
                        "moe.experts=4", "moe.k=2", "moe.router=topk_mask", "moe.expert_hidden=8", "moe.balance.load=0",
                        "model.char_embed=4", "model.char_hidden=3", "model.qa_attention=bidaf"})
    config.apply_override(a);
  SpanExtractorOptions options(encoder_options(config, 40));
  options.attention(config.get_string("model.qa_attention"));
  SpanExtractor model(options);
  model->eval();
  // Each sequence is question, <sep>, context; the words' spelling goes along for the characters.
  struct Example {
    std::vector<int64_t> ids;
    std::vector<std::string> words;
    int64_t question;
  };
  const Example long_one{{3, 4, 5, 2, 6, 7, 8, 9, 10, 11, 12}, {"Who", "made", "it", "<sep>", "God", "made", "the", "heaven", "and", "the", "earth"}, 3};
  const Example short_one{{13, 14, 2, 15, 16, 17}, {"Where", "?", "<sep>", "in", "Eden", "."}, 2};
  auto inputs_of = [&](const std::vector<const Example*>& examples, PackedBatch& packed) {
    std::vector<const std::vector<int64_t>*> ids;
    for (const auto* e : examples) ids.push_back(&e->ids);
    packed = pack_sequences(ids);
    int64_t longest_context = 0, longest_question = 0;
    for (const auto* e : examples) {
      longest_question = std::max(longest_question, e->question);
      longest_context = std::max(longest_context, static_cast<int64_t>(e->ids.size()) - e->question - 1);
    }
    const auto rows = static_cast<int64_t>(examples.size());
    auto context_rows = torch::full({rows, longest_context}, -1, torch::kLong);
    auto question_rows = torch::full({rows, longest_question}, -1, torch::kLong);
    std::vector<const std::string*> words(static_cast<size_t>(packed.tokens()));
    for (int64_t b = 0; b < rows; ++b) {
      const auto& e = *examples[static_cast<size_t>(b)];
      const auto& r = packed.rows[static_cast<size_t>(b)];
      for (size_t t = 0; t < e.ids.size(); ++t) words[static_cast<size_t>(r[t])] = &e.words[t];
      for (int64_t t = 0; t < e.question; ++t) question_rows[b][t] = r[static_cast<size_t>(t)];
      for (int64_t t = e.question + 1; t < static_cast<int64_t>(e.ids.size()); ++t)
        context_rows[b][t - e.question - 1] = r[static_cast<size_t>(t)];
    }
    return SpanInputs{packed.values, packed.batch_sizes, word_bytes(words), context_rows, question_rows,
                      torch::Tensor()};
  };
  PackedBatch both_packed, alone_packed;
  const auto both = model(inputs_of({&long_one, &short_one}, both_packed)).logits;
  const auto alone = model(inputs_of({&short_one}, alone_packed)).logits;
  EXPECT_TRUE(torch::allclose(both.start[1].narrow(0, 0, 3), alone.start[0], 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(both.end[1].narrow(0, 0, 3), alone.end[0], 1e-5, 1e-6));
  EXPECT_TRUE(both.start[1].narrow(0, 3, 4).isinf().all().item<bool>());  // past the short context's end
  // Gradients reach the character features and the attention weights.
  const auto loss = SpanExtractorImpl::loss(both, torch::tensor({1, 0}), torch::tensor({3, 1}));
  loss.backward();
  EXPECT_GT(model->attention->w_product.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(model->encoder->chars->embedding->weight.grad().abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace moelab
