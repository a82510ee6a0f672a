-- Replays pre-signed webhook requests, one file per wrk thread, so that every request
-- carries its own webhook-id and order id (no request is a duplicate of another).
local counter = 0
local requests = {}
local position = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  local path = args[1] .. "-" .. tid .. ".tsv"
  for line in io.lines(path) do
    local id, stamp, signature, body = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)")
    requests[#requests + 1] = wrk.format("POST", args[2], {
      ["Content-Type"] = "application/json",
      ["webhook-id"] = id,
      ["webhook-timestamp"] = stamp,
      ["webhook-signature"] = signature,
    }, body)
  end
end

function request()
  position = position + 1
  if position > #requests then position = 1 end
  return requests[position]
end
