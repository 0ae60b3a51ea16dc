// The request handling of every RPC of fisherd.v1.FisherService through the in-process
// service (server/service.h on a grpc::Server without a port, reached through its
// in-process channel). Before each input the registry is reset to fuzz/layouts.h's
// sessions, each holding one batch, under small limits; the input is then a sequence of
// calls, each an RPC selector and its request bytes. Errors are fine; crashes, UB,
// leaks and hangs are not.
//
// Input: up to kMaxCalls of [rpc u8][request section: u16 length, bytes]. For the
// streaming RPCs the section is itself a sequence of sections, one message each.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fisherd/v1/fisher.grpc.pb.h"
#include "fuzz/fuzz_util.h"
#include "fuzz/layouts.h"
#include "grpcpp/grpcpp.h"
#include "server/batch_decoder.h"
#include "server/service.h"
#include "server/session_registry.h"
#include "server/work_pool.h"

namespace {

namespace v1 = fisherd::v1;
namespace server = fisherd::server;

constexpr int kMaxCalls = 8;
constexpr int kMaxStreamMessages = 8;
constexpr int kMaxMessageBytes = 1 << 20;

enum Rpc : uint8_t {
  kCreateSession,
  kGetSession,
  kListSessions,
  kDeleteSession,
  kAddScores,
  kStreamScores,
  kNaturalGradientStep,
  kStreamNaturalGradientStep,
  kFisherVectorProduct,
  kGetFisher,
  kRpcCount,
};

struct Service {
  std::unique_ptr<server::SessionRegistry> registry;
  std::unique_ptr<server::WorkPool> pool;
  std::unique_ptr<server::FisherServiceImpl> service;
  std::unique_ptr<grpc::Server> grpc_server;
  std::unique_ptr<v1::FisherService::Stub> stub;
};

// Built once and never destroyed (the fuzzer exits without tearing gRPC down).
Service& GetService() {
  static Service* s = [] {
    auto* s = new Service;
    server::RegistryLimits limits;
    limits.max_sessions = 8;
    limits.max_dense_dim = 32;
    limits.memory_budget_bytes = uint64_t{2} << 20;
    s->registry = std::make_unique<server::SessionRegistry>(limits);
    s->pool = std::make_unique<server::WorkPool>(2);
    s->service = std::make_unique<server::FisherServiceImpl>(s->registry.get(), s->pool.get(),
                                                             kMaxMessageBytes);
    grpc::ServerBuilder builder;
    builder.RegisterService(s->service.get());
    builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
    builder.SetMaxSendMessageSize(kMaxMessageBytes);
    s->grpc_server = builder.BuildAndStart();
    FUZZ_CHECK(s->grpc_server != nullptr);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessageBytes);
    args.SetMaxSendMessageSize(kMaxMessageBytes);
    s->stub = v1::FisherService::NewStub(s->grpc_server->InProcessChannel(args));
    return s;
  }();
  return *s;
}

// One batch of ones for every block and factor of the session, so steps and products
// have something to work on.
void Populate(fisherd::Session& session) {
  const fisherd::BlockLayout& layout = session.layout();
  std::vector<std::pair<std::string, int>> parts;  // block name, factor
  if (layout.empty()) {
    parts.emplace_back("", 0);
  } else {
    for (int64_t b = 0; b < layout.size(); ++b) {
      if (layout.block(b).kind == fisherd::BlockKind::kKronecker) {
        parts.emplace_back(layout.block(b).name, v1::FACTOR_ACTIVATIONS);
        parts.emplace_back(layout.block(b).name, v1::FACTOR_OUTPUT_GRADIENTS);
      } else {
        parts.emplace_back(layout.block(b).name, 0);
      }
    }
  }
  for (const auto& [block, factor] : parts) {
    int64_t width = session.options().dim;
    if (!block.empty()) {
      const fisherd::BlockOptions& options = layout.block(layout.Find(block));
      width = options.RowWidth(static_cast<fisherd::Factor>(factor));
    }
    v1::ScoreBatch batch;
    batch.set_rows(2);
    batch.set_block(block);
    batch.set_factor(static_cast<v1::Factor>(factor));
    for (int64_t i = 0; i < 2 * width; ++i) batch.add_scores(0.5f + static_cast<float>(i % 3));
    auto prepared = server::DecodeScoreBatch(batch, session.options(), layout);
    FUZZ_CHECK(prepared.ok());
    session.AddScores("", 0, *prepared);
  }
}

void Reset(Service& s) {
  for (const auto& entry : s.registry->List()) s.registry->Delete(entry.name).IgnoreError();
  for (const auto& layout : fisherd::fuzz::FuzzLayouts()) {
    auto entry = s.registry->Create(layout.id, layout.config);
    FUZZ_CHECK(entry.ok());
    Populate(*entry->session);
  }
}

void SetDeadline(grpc::ClientContext* context) {
  // Far beyond what any call of these sizes takes: a call that hits it is a hang.
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
}

template <typename Request>
bool Parse(const std::string& bytes, Request* request) {
  return request->ParseFromString(bytes);
}

void Call(Service& s, uint8_t rpc, const std::string& body) {
  grpc::ClientContext context;
  SetDeadline(&context);
  switch (rpc % kRpcCount) {
    case kCreateSession: {
      v1::CreateSessionRequest request;
      v1::Session response;
      if (Parse(body, &request)) s.stub->CreateSession(&context, request, &response);
      break;
    }
    case kGetSession: {
      v1::GetSessionRequest request;
      v1::Session response;
      if (Parse(body, &request)) s.stub->GetSession(&context, request, &response);
      break;
    }
    case kListSessions: {
      v1::ListSessionsRequest request;
      v1::ListSessionsResponse response;
      if (Parse(body, &request)) s.stub->ListSessions(&context, request, &response);
      break;
    }
    case kDeleteSession: {
      v1::DeleteSessionRequest request;
      v1::DeleteSessionResponse response;
      if (Parse(body, &request)) s.stub->DeleteSession(&context, request, &response);
      break;
    }
    case kAddScores: {
      v1::ScoreBatch request;
      v1::ScoreAck response;
      if (Parse(body, &request)) s.stub->AddScores(&context, request, &response);
      break;
    }
    case kNaturalGradientStep: {
      v1::NaturalGradientStepRequest request;
      v1::NaturalGradientStepResponse response;
      if (Parse(body, &request)) s.stub->NaturalGradientStep(&context, request, &response);
      break;
    }
    case kFisherVectorProduct: {
      v1::FisherVectorProductRequest request;
      v1::FisherVectorProductResponse response;
      if (Parse(body, &request)) s.stub->FisherVectorProduct(&context, request, &response);
      break;
    }
    case kGetFisher: {
      v1::GetFisherRequest request;
      if (!Parse(body, &request)) break;
      auto reader = s.stub->GetFisher(&context, request);
      v1::GetFisherResponse response;
      while (reader->Read(&response)) {
      }
      reader->Finish();
      break;
    }
    case kStreamScores: {
      fisherd::fuzz::ByteReader messages(reinterpret_cast<const uint8_t*>(body.data()),
                                         body.size());
      auto stream = s.stub->StreamScores(&context);
      // Acks are read while writing: the in-process transport buffers no message, so a
      // writer that read only at the end would wait on the server's unread ack forever.
      std::thread reader([&stream] {
        v1::ScoreAck ack;
        while (stream->Read(&ack)) {
        }
      });
      for (int i = 0; i < kMaxStreamMessages && !messages.empty(); ++i) {
        v1::ScoreBatch batch;
        if (!batch.ParseFromString(messages.Section())) continue;
        if (!stream->Write(batch)) break;
      }
      stream->WritesDone();
      reader.join();
      stream->Finish();
      break;
    }
    case kStreamNaturalGradientStep: {
      fisherd::fuzz::ByteReader messages(reinterpret_cast<const uint8_t*>(body.data()),
                                         body.size());
      auto stream = s.stub->StreamNaturalGradientStep(&context);
      std::thread reader([&stream] {
        v1::StreamNaturalGradientStepResponse response;
        while (stream->Read(&response)) {
        }
      });
      for (int i = 0; i < kMaxStreamMessages && !messages.empty(); ++i) {
        v1::StreamNaturalGradientStepRequest request;
        if (!request.ParseFromString(messages.Section())) continue;
        if (!stream->Write(request)) break;
      }
      stream->WritesDone();
      reader.join();
      stream->Finish();
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Service& s = GetService();
  Reset(s);
  fisherd::fuzz::ByteReader in(data, size);
  for (int i = 0; i < kMaxCalls && !in.empty(); ++i) {
    const uint8_t rpc = in.U8();
    Call(s, rpc, in.Section());
  }
  return 0;
}
