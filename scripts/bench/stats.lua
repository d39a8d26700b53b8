-- GET /api/usage/stats for a random user's last 30 days by day.
-- Arguments: <users> <api key>
local users, key
function init(args)
  users = tonumber(args[1])
  key = args[2]
  math.randomseed(os.time())
end
function request()
  local path = string.format("/api/usage/stats?userId=u%d&days=30&period=day", math.random(0, users - 1))
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. key })
end
-- The target is a 95th percentile, which wrk's --latency table leaves out.
function done(summary, latency, requests)
  io.write(string.format("     95%%   %.2fms\n", latency:percentile(95) / 1000))
end
