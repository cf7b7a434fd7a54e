-- wrk: single-range GETs at random offsets. LEN bytes each; ALIGN=512 for iPXE-like reads.
local size = tonumber(os.getenv("SIZE"))
local len = tonumber(os.getenv("LEN"))
local align = tonumber(os.getenv("ALIGN") or "1")
local n = 0
setup = function(thread)
  n = n + 1
  thread:set("seed", n * 7919)
end
init = function(args)
  math.randomseed(seed)
end
request = function()
  local off = math.random(0, math.floor((size - len) / align)) * align
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. off .. "-" .. (off + len - 1) })
end
