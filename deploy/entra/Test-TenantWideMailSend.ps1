#Requires -Version 7.4
#Requires -Modules Microsoft.Graph.Authentication, Microsoft.Graph.Applications
<#
.SYNOPSIS
    Finds service principals that hold a TENANT-WIDE Microsoft Graph application permission to send or
    read mail (default: Mail.Send) and prints how to remove it.

.DESCRIPTION
    A tenant-wide application permission (an app role assignment on the Microsoft Graph service principal,
    created by "Grant admin consent") lets the app act on EVERY mailbox. Exchange Online RBAC for
    Applications does not restrict it: Entra consent and Exchange RBAC grants add up, so any app that
    holds both has the union, i.e. everything. The integration standard allows Mail.Send only through an
    Exchange RBAC management scope (deploy/exchange/Grant-MailworkerMailboxScope.ps1).

    Read-only unless -Remove is given; -Remove asks per assignment (or honours -WhatIf / -Confirm:$false).
    Exit code 1 when a non-allowed assignment is found (for scheduled audits), 0 otherwise.
    Note: Exchange Online legacy "ApplicationAccessPolicy" restrictions are a different, older mechanism;
    RBAC for Applications replaces them (verify the migration state in your tenant).

    Delegated scope: Application.Read.All (Application.ReadWrite.All and AppRoleAssignment.ReadWrite.All
    with -Remove). Role: Global Reader for the audit; Privileged Role Administrator or Cloud Application
    Administrator to remove (verify in your tenant).

.PARAMETER Permission
    Graph application permissions to look for. Default Mail.Send.
.PARAMETER AllowedAppId
    App ids that are allowed to keep the permission (documented exceptions).
.PARAMETER Remove
    Remove the assignments found (with confirmation).

.EXAMPLE
    ./Test-TenantWideMailSend.ps1
.EXAMPLE
    ./Test-TenantWideMailSend.ps1 -Permission Mail.Send, Mail.ReadWrite, Mail.Read -AllowedAppId 2222...
.EXAMPLE
    ./Test-TenantWideMailSend.ps1 -Remove -WhatIf
#>
[CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'High')]
param(
    [ValidateSet('Mail.Send', 'Mail.ReadWrite', 'Mail.Read', 'Mail.ReadBasic', 'Mail.ReadBasic.All', 'MailboxSettings.ReadWrite', 'full_access_as_app')]
    [string[]] $Permission = @('Mail.Send'),

    [ValidatePattern('^[0-9a-fA-F-]{36}$')]
    [string[]] $AllowedAppId = @(),

    [switch] $Remove,

    [ValidatePattern('^[0-9a-fA-F-]{36}$')]
    [string] $TenantId,

    [ValidateSet('Global', 'USGov', 'USGovDoD', 'China')]
    [string] $Environment = 'Global'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot 'MailworkerEntra.psm1') -Force

$scopes = if ($Remove) { @('Application.ReadWrite.All', 'AppRoleAssignment.ReadWrite.All') } else { @('Application.Read.All') }
Connect-MailworkerGraph -Scopes $scopes -TenantId $TenantId -Environment $Environment | Out-Null

$graph = Get-GraphServicePrincipal
$roles = @{}
foreach ($p in $Permission) {
    if ($p -eq 'full_access_as_app') { continue } # an Exchange (EWS) permission, not a Graph one
    $roles[(Get-GraphAppRoleId -GraphServicePrincipal $graph -Permission $p)] = $p
}

# Every assignment of a Graph app role to a service principal (i.e. every tenant-wide application grant).
$found = foreach ($a in Get-MgServicePrincipalAppRoleAssignedTo -ServicePrincipalId $graph.Id -All) {
    if ($a.PrincipalType -ne 'ServicePrincipal' -or -not $roles.ContainsKey([string]$a.AppRoleId)) { continue }
    $sp = Get-MgServicePrincipal -ServicePrincipalId $a.PrincipalId -Property 'id,appId,displayName' -ErrorAction SilentlyContinue
    [pscustomobject]@{
        ServicePrincipal   = $a.PrincipalDisplayName
        AppId              = if ($sp) { $sp.AppId } else { '' }
        ServicePrincipalId = $a.PrincipalId
        Permission         = $roles[[string]$a.AppRoleId]
        AssignmentId       = $a.Id
        Granted            = $a.CreatedDateTime
        Allowed            = ($sp -and $sp.AppId -in $AllowedAppId)
    }
}
$found = @($found)
$bad = @($found | Where-Object { -not $_.Allowed })

if (-not $found) {
    Write-Host "OK: no service principal holds tenant-wide $($Permission -join ', ') on Microsoft Graph."
    exit 0
}
$found | Format-Table ServicePrincipal, AppId, Permission, Granted, Allowed, AssignmentId -AutoSize | Out-Host

foreach ($b in $bad) {
    Write-Host ("TENANT-WIDE {0}: '{1}' (appId {2}). To remove:" -f $b.Permission, $b.ServicePrincipal, $b.AppId)
    Write-Host ("  Remove-MgServicePrincipalAppRoleAssignment -ServicePrincipalId {0} -AppRoleAssignmentId {1}" -f $b.ServicePrincipalId, $b.AssignmentId)
    Write-Host  '  (or Entra admin center > Enterprise applications > the app > Permissions > Review permissions / revoke)'
    Write-Host  '  Then give it a mailbox-scoped grant instead: deploy/exchange/Grant-MailworkerMailboxScope.ps1.'
    Write-Host  '  Removal is effective for new tokens at once; already issued tokens keep the role until they expire (about 1 hour).'
    if ($Remove -and $PSCmdlet.ShouldProcess("$($b.ServicePrincipal) ($($b.AppId))", "Remove tenant-wide $($b.Permission)")) {
        Remove-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $b.ServicePrincipalId -AppRoleAssignmentId $b.AssignmentId
        Write-Host "  Removed."
    }
}
if ($bad) { exit 1 }
exit 0
