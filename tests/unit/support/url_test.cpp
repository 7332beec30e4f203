// mask_url: credentials never leave the process in logs or error messages.
#include <catch2/catch.hpp>
#include <string>

#include "dmm/url.hpp"

using dmm::mask_url;

TEST_CASE("a PostgreSQL URL has its password masked", "[url]") {
  CHECK(mask_url("postgresql://u:p@h/db") == "postgresql://u:****@h/db");
  CHECK(mask_url("postgresql://app:s3cret@db.example.com:5433/orders?sslmode=require") ==
        "postgresql://app:****@db.example.com:5433/orders?sslmode=require");
  CHECK(mask_url("postgres://u:p@h/db") == "postgres://u:****@h/db");
}

TEST_CASE("a NATS URL has its password masked", "[url]") {
  CHECK(mask_url("nats://u:p@h:4222") == "nats://u:****@h:4222");
  CHECK(mask_url("tls://user:pw@nats.example.com:4443") == "tls://user:****@nats.example.com:4443");
}

TEST_CASE("a URL without a password is unchanged", "[url]") {
  for (const char* url : {"postgresql://u@h/db", "postgresql://h:5432/db", "nats://h:4222",
                          "nats://127.0.0.1:4222", "postgresql:///db?host=/var/run/postgresql", ""}) {
    CHECK(mask_url(url) == url);
  }
}

TEST_CASE("a key=value connection string has its password masked", "[url]") {
  CHECK(mask_url("host=h user=u password=x dbname=d") == "host=h user=u password=**** dbname=d");
  CHECK(mask_url("password=x") == "password=****");
  std::string quoted = mask_url("host=h password='a secret' dbname=d");
  CHECK_THAT(quoted, !Catch::Contains("secret"));
  CHECK_THAT(quoted, Catch::Contains("****"));
  CHECK_THAT(quoted, Catch::Contains("dbname=d"));
}

TEST_CASE("a password given as a URL query parameter is masked", "[url]") {
  std::string masked = mask_url("postgresql://u@h/db?password=hunter2&sslmode=require");
  CHECK_THAT(masked, !Catch::Contains("hunter2"));
  CHECK_THAT(masked, Catch::Contains("****"));
  CHECK_THAT(masked, Catch::Contains("sslmode=require"));
}

TEST_CASE("a URL-encoded password is masked entirely", "[url]") {
  std::string masked = mask_url("postgresql://u:p%40ss%3Aw%2Ford@h:5432/db");
  CHECK(masked == "postgresql://u:****@h:5432/db");
  CHECK_THAT(masked, !Catch::Contains("%40"));
}

TEST_CASE("every URL of a comma-separated NATS list has its password masked", "[url]") {
  CHECK(mask_url("nats://a:one@h1:4222,nats://b:two@h2:4222") == "nats://a:****@h1:4222,nats://b:****@h2:4222");
  std::string mixed = mask_url("nats://h1:4222, nats://b:two@h2:4222");
  CHECK_THAT(mixed, !Catch::Contains("two"));
  CHECK_THAT(mixed, Catch::Contains("h1:4222"));
  CHECK_THAT(mixed, Catch::Contains("b:****@h2:4222"));
}
