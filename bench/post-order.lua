-- wrk script: POSTs the sample order, each request with its own order
-- number (so that none is a duplicate), and counts answers that are not 202.
local order = io.open(os.getenv("ORDER_FILE") or "tests/fixtures/samples/marketplace/order-paid.json"):read("*a")
local threads = {}

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
  local id = string.format("LOAD-%d-%d", tid, counter)
  local body = order:gsub("GB%-2026%-0001842", id)
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
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
