// Loads a model directory and generates greedily from token ids, through the
// public C++ API only.
//
//   generate <model_dir> <max_tokens> <token id>...
// Prints the generated token ids on one line.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <cserve/engine.h>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " <model_dir> <max_tokens> <token id>...\n";
    return 2;
  }
  try {
    cserve::EngineConfig config;
    config.model = argv[1];
    config.dtype = "float32";
    cserve::Engine engine(config);

    cserve::SamplingParams params;
    params.temperature = 0;
    params.max_tokens = std::atoi(argv[2]);
    params.ignore_eos = true;
    std::vector<int32_t> prompt;
    for (int i = 3; i < argc; ++i) prompt.push_back(std::atoi(argv[i]));
    engine.add_request("example", prompt, params);

    std::vector<int32_t> tokens;
    while (engine.has_unfinished_requests())
      for (const cserve::RequestOutput& out : engine.step()) {
        // A failed step ends its requests with FinishReason::Error and says why.
        if (out.finish_reason == cserve::FinishReason::Error) throw cserve::Error(out.error);
        tokens.insert(tokens.end(), out.new_token_ids.begin(), out.new_token_ids.end());
      }
    for (size_t i = 0; i < tokens.size(); ++i) std::cout << (i ? " " : "") << tokens[i];
    std::cout << "\n";
  } catch (const cserve::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
