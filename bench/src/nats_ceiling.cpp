// The JetStream ceiling dmm's tokens are measured against: N async publishes
// to a WorkQueue stream shaped like a dmm bucket's (one subject per message,
// MaxMsgsPerSubject = 1), then fetch in batches of 256 with async acks.
//   nats_ceiling NATS_URL N  ->  "RESULT publish_per_s X" and "RESULT fetch_ack_per_s Y"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nats/nats.h>
#include <string>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

void check(natsStatus s, const char* what) {
  if (s == NATS_OK) return;
  std::fprintf(stderr, "nats_ceiling: %s: %s (%s)\n", what, natsStatus_GetText(s), nats_GetLastError(nullptr));
  std::exit(1);
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: nats_ceiling NATS_URL N\n");
    return 2;
  }
  const long n = std::atol(argv[2]);
  natsConnection* nc = nullptr;
  check(natsConnection_ConnectTo(&nc, argv[1]), "connect");
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = 65536;  // as dmm
  jsCtx* js = nullptr;
  check(natsConnection_JetStream(&js, nc, &jo), "jetstream");

  const std::string id = std::to_string(getpid());
  const std::string name = "CEILING_" + id, prefix = "ceiling." + id + ".", subjects = prefix + ">";
  const char* subject_list[] = {subjects.c_str()};
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = name.c_str();
  cfg.Subjects = subject_list;
  cfg.SubjectsLen = 1;
  cfg.Retention = js_WorkQueuePolicy;
  cfg.MaxMsgsPerSubject = 1;
  cfg.Storage = js_FileStorage;
  check(js_AddStream(nullptr, js, &cfg, nullptr, nullptr), "add stream");

  auto t = Clock::now();
  for (long i = 0; i < n; ++i) {
    const std::string subject = prefix + std::to_string(i);
    check(js_PublishAsync(js, subject.c_str(), nullptr, 0, nullptr), "publish");
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 120'000;
  check(js_PublishAsyncComplete(js, &po), "publish complete");
  std::printf("RESULT publish_per_s %.6g\n", n / seconds_since(t));

  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = "ceiling";
  cc.AckPolicy = js_AckExplicit;
  cc.MaxAckPending = 65536;  // as dmm
  check(js_AddConsumer(nullptr, js, name.c_str(), &cc, nullptr, nullptr), "add consumer");
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = name.c_str();
  so.Consumer = "ceiling";
  natsSubscription* sub = nullptr;
  check(js_PullSubscribe(&sub, js, subjects.c_str(), "ceiling", &jo, &so, nullptr), "pull subscribe");
  t = Clock::now();
  long got = 0;
  while (got < n) {
    natsMsgList list{};
    natsStatus s = natsSubscription_Fetch(&list, sub, 256, 1000, nullptr);
    if (s == NATS_TIMEOUT) continue;
    check(s, "fetch");
    for (int i = 0; i < list.Count; ++i) natsMsg_Ack(list.Msgs[i], nullptr);  // async: no reply awaited
    got += list.Count;
    natsMsgList_Destroy(&list);
  }
  check(natsConnection_FlushTimeout(nc, 60'000), "flush acks");
  std::printf("RESULT fetch_ack_per_s %.6g\n", n / seconds_since(t));

  natsSubscription_Destroy(sub);
  js_DeleteStream(js, name.c_str(), nullptr, nullptr);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  nats_Close();
  return 0;
}
