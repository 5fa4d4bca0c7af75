-- wrk script: POSTs the sample order, each request with its own order
-- number (so that none is a duplicate), and counts answers that are not 202.
local order = io.open(os.getenv("ORDER_FILE") or "tests/fixtures/samples/marketplace/order-paid.json"):read("*a")
-- Split once around the order number: each request only concatenates.
local at, to = order:find("GB-2026-0001842", 1, true)
local head, tail = order:sub(1, at - 1), order:sub(to + 1)
local headers = { ["Content-Type"] = "application/json" }
local threads = {}
-- Order numbers start with RUN (default LOAD): runs against the same
-- journal with different RUNs send different orders.
local run = os.getenv("RUN") or "LOAD"

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  not_accepted = 0
end

function request()
  counter = counter + 1
  local id = string.format("%s-%d-%d", run, tid, counter)
  return wrk.format("POST", nil, headers, head .. id .. tail)
end

function response(status, headers, body)
  if status ~= 202 then
    not_accepted = not_accepted + 1
  end
end

function done(summary, latency, requests)
  local refused = 0
  for _, t in ipairs(threads) do
    refused = refused + t:get("not_accepted")
  end
  io.write(string.format("not_accepted=%d\n", refused))
end
