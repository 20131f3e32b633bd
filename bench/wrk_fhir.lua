-- wrk script used by bench/rest_benchmark.py and bench/search_scale_benchmark.py (one script, four modes).
--
--   wrk -t T -c C -d D --timeout 10s -s bench/wrk_fhir.lua http://127.0.0.1:PORT/fhir \
--       -- MODE DATA_FILE MAX_REQUESTS_PER_THREAD SEED THREADS
--
-- MODE read    DATA_FILE holds one Patient id a line; GET [base]/Patient/<random id>.
-- MODE create  DATA_FILE holds one Patient JSON a line (no id); POST [base]/Patient,
--              cycling through the bodies.
-- MODE get     DATA_FILE holds one path a line, relative to the base (e.g.
--              Observation?patient=...); GET a random one, expecting 200
--              (bench/search_scale_benchmark.py).
-- MODE update  DATA_FILE holds "id<TAB>json" lines, the json carrying @@ID@@ and @@N@@
--              placeholders; PUT [base]/Patient/<id> with the id and a fresh counter
--              (so every PUT really changes the resource). Thread k of T takes the ids
--              k, k+T, k+2T, ... and walks them in order, so the C/T requests a thread
--              has in flight always name different ids (no row-lock contention).
--
-- Every thread stops after MAX_REQUESTS_PER_THREAD responses (wrk's -d bounds the time).
-- done() prints one line "WRK_RESULT {json}" with the counts and latency percentiles
-- (microseconds); responses whose status is not the expected one are counted as
-- "unexpected" (wrk itself only counts statuses >= 400).

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("tid", thread_count)
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread runs its own copy of this script).
-- tid is set by setup(); responses/unexpected are read back in done().
responses = 0
unexpected = 0
local mode, expected, max_requests
local requests_list = {}
local n = 0
local pos = 0
local update_ids, update_pre, update_mid, update_post = {}, {}, {}, {}

local function lines(path)
   local out = {}
   local f = assert(io.open(path, "r"))
   for line in f:lines() do
      if #line > 0 then
         out[#out + 1] = line
      end
   end
   f:close()
   return out
end

local function split_template(json)
   local a, b = string.find(json, "@@ID@@", 1, true)
   local c, d = string.find(json, "@@N@@", b + 1, true)
   assert(a and c, "update template needs @@ID@@ before @@N@@")
   return string.sub(json, 1, a - 1), string.sub(json, b + 1, c - 1), string.sub(json, d + 1)
end

function init(args)
   mode = args[1]
   local data = lines(args[2])
   max_requests = tonumber(args[3])
   local seed = tonumber(args[4] or "1")
   local base = wrk.path
   if string.sub(base, -1) == "/" then
      base = string.sub(base, 1, -2)
   end
   math.randomseed(seed * 1000 + tid)
   if mode == "read" then
      expected = 200
      local headers = { ["Accept"] = "application/fhir+json" }
      for i, id in ipairs(data) do
         requests_list[i] = wrk.format("GET", base .. "/Patient/" .. id, headers)
      end
   elseif mode == "get" then
      expected = 200
      local headers = { ["Accept"] = "application/fhir+json" }
      for i, path in ipairs(data) do
         requests_list[i] = wrk.format("GET", base .. "/" .. path, headers)
      end
   elseif mode == "create" then
      expected = 201
      local headers = {
         ["Accept"] = "application/fhir+json",
         ["Content-Type"] = "application/fhir+json",
      }
      for i, body in ipairs(data) do
         requests_list[i] = wrk.format("POST", base .. "/Patient", headers, body)
      end
   elseif mode == "update" then
      expected = 200
      local threads_total = tonumber(args[5] or "1")
      for i, line in ipairs(data) do
         if (i - 1) % threads_total == tid - 1 then
            local tab = string.find(line, "\t", 1, true)
            local id = string.sub(line, 1, tab - 1)
            local pre, mid, post = split_template(string.sub(line, tab + 1))
            local k = #update_ids + 1
            update_ids[k] = id
            update_pre[k], update_mid[k], update_post[k] = pre, mid, post
         end
      end
      n = #update_ids
      update_headers = {
         ["Accept"] = "application/fhir+json",
         ["Content-Type"] = "application/fhir+json",
      }
      update_base = base .. "/Patient/"
   else
      error("unknown mode " .. tostring(mode))
   end
   if mode ~= "update" then
      n = #requests_list
   end
   assert(n > 0, "no data for mode " .. mode)
end

local counter = 0

function request()
   if mode == "read" or mode == "get" then
      return requests_list[math.random(n)]
   elseif mode == "create" then
      pos = pos % n + 1
      return requests_list[pos]
   else
      pos = pos % n + 1
      counter = counter + 1
      local id = update_ids[pos]
      local body = update_pre[pos] .. id .. update_mid[pos] .. tostring(counter) .. update_post[pos]
      return wrk.format("PUT", update_base .. id, update_headers, body)
   end
end

function response(status, headers, body)
   responses = responses + 1
   if status ~= expected then
      unexpected = unexpected + 1
      if unexpected <= 3 then
         io.stderr:write("wrk: unexpected status " .. status .. ": " .. string.sub(body or "", 1, 300) .. "\n")
      end
   end
   if responses >= max_requests then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local bad, got = 0, 0
   for _, t in ipairs(threads) do
      bad = bad + (t:get("unexpected") or 0)
      got = got + (t:get("responses") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests":%d,"responses_seen":%d,"duration_us":%d,"bytes":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"unexpected_status":%d,'
         .. '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,'
         .. '"p50":%d,"p90":%d,"p99":%d,"p99_9":%d}}\n',
      summary.requests, got, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      bad,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)
   ))
end
