// The NATS half of kind_stats: tokens pending per kind, read from the durable
// consumers of each kind's priority classes (read-only; creates nothing).
// Connects as the engine does (tokens.hpp: clusters, TLS).
#include <fmt/format.h>
#include <nats/nats.h>

#include "dmm/errors.hpp"
#include "dmm/inspect.hpp"
#include "dmm/url.hpp"
#include "protocol/names.hpp"
#include "protocol/vocabulary.hpp"
#include "tokens/tokens.hpp"

namespace dmm {

void stream_stats(std::vector<KindStats>& stats, const std::string& nats, const std::string& bucket,
                  const NatsTls& tls) {
  natsConnection* conn =
      detail::connect_nats({nats, tls.ca_file, tls.cert_file, tls.key_file, tls.creds_file, tls.nkey_seed_file},
                           "dmm stream_stats", false, fmt::format("the stream stats of bucket '{}'", bucket));
  natsStatus s = NATS_OK;
  jsCtx* js = nullptr;
  s = natsConnection_JetStream(&js, conn, nullptr);
  const auto stream = detail::stream_name(bucket);
  for (auto& k : stats) {
    // Summed over the kind's priority classes, each a consumer of its own.
    for (const auto& p : detail::kPriorities) {
      if (s != NATS_OK) break;
      jsConsumerInfo* ci = nullptr;
      jsErrCode jerr = static_cast<jsErrCode>(0);
      const auto name = detail::class_name(k.kind, p.priority);
      if (js_GetConsumerInfo(&ci, js, stream.c_str(), name.c_str(), nullptr, &jerr) != NATS_OK) continue;
      k.consumer_lag = k.consumer_lag.value_or(0) + static_cast<std::int64_t>(ci->NumPending);
      k.ack_pending = k.ack_pending.value_or(0) + static_cast<std::int64_t>(ci->NumAckPending);
      k.tokens_pending = *k.consumer_lag + *k.ack_pending;
      jsConsumerInfo_Destroy(ci);
    }
  }
  jsCtx_Destroy(js);
  natsConnection_Destroy(conn);
  if (s != NATS_OK)
    throw ConnectionError(fmt::format("NATS at {}: cannot open JetStream: {}", mask_url(nats), natsStatus_GetText(s)));
}

}  // namespace dmm
