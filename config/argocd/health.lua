-- Argo CD health check for substrate.ate.dev Actor and Atespace (one script for both kinds).
-- Install it as `resource.customizations.health.substrate.ate.dev_Actor` and
-- `resource.customizations.health.substrate.ate.dev_Atespace` in argocd-cm (see README.md).
--
-- Rules (kstatus-compatible, the same ones Flux applies):
--   * status.observedGeneration older than metadata.generation -> Progressing
--   * a Stalled=True condition, or an Actor in phase Failed   -> Degraded
--   * a Reconciling=True condition                            -> Progressing
--     (an Actor fresh from create has Reconciling=True/Created until the operator has seen
--     it, Reconciling=True/TemplateNotFound while its template does not exist)
--   * Atespace: Active with Ready=True -> Healthy; Terminating -> Progressing
--   * Actor: Running with Ready=True -> Healthy; Suspended is the resting state of an
--     OnDemand actor (Healthy) and the requested state of a `Suspended` one (Suspended);
--     Resuming/Suspending -> Progressing; an `Always` actor not running yet -> Progressing
local hs = { status = "Progressing", message = "waiting for status" }
if obj.status == nil then
  return hs
end

local function condition(t)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then
      return c
    end
  end
  return nil
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "waiting for generation " .. generation .. " to be observed (at " .. observed .. ")"
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message or stalled.reason or "stalled"
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = reconciling.message or reconciling.reason or "reconciling"
  return hs
end
local ready = condition("Ready")

if obj.kind == "Atespace" then
  if obj.status.phase == "Terminating" then
    hs.message = "terminating"
    return hs
  end
  if ready == nil or ready.status == "True" then
    hs.status = "Healthy"
    hs.message = "active"
    return hs
  end
  hs.message = ready.message or "not ready"
  return hs
end

-- Actor
local phase = obj.status.phase
local activation = "OnDemand"
if obj.spec ~= nil and obj.spec.activation ~= nil then
  activation = obj.spec.activation
end
if phase == "Failed" then
  hs.status = "Degraded"
  if ready ~= nil and ready.message ~= nil then
    hs.message = ready.message
  else
    hs.message = "the actor failed"
  end
  return hs
end
if phase == "Running" then
  if ready == nil or ready.status == "True" then
    hs.status = "Healthy"
    hs.message = "running"
  else
    hs.message = ready.message or "running, not ready yet"
  end
  return hs
end
if phase == "Suspended" then
  if activation == "Always" then
    hs.message = "waiting to be resumed"
  elseif activation == "Suspended" then
    hs.status = "Suspended"
    hs.message = "suspended"
  else
    hs.status = "Healthy"
    hs.message = "suspended; resumes on demand"
  end
  return hs
end
hs.message = (phase or "Unknown") .. "..."
return hs
