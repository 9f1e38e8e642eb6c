#Requires -Version 7.4
#Requires -Modules Microsoft.Graph.Authentication, Microsoft.Graph.Applications
<#
.SYNOPSIS
    Rotates the certificate of a mailworker app registration without downtime: list, add the new
    certificate (old one stays valid), and once every worker has switched to it remove the old one.

.DESCRIPTION
    Zero-downtime rotation, three steps, run days apart if you like:
      1. -Add     upload (-CertificatePath) or create (-CreateCertificate) the new certificate. Both old and
                  new are now valid credentials for the app.
      2. Roll out: replace key "<profile>.pem" of Secret mailworker-credentials with the new .pem. The
                  workers re-read it (credential.reloadInterval, 30 s, after the kubelet's refresh of
                  about a minute) and switch without a restart; each logs "credential reloaded" with
                  the new thumbprint. Check that
                  mailworker_credential_expiry_timestamp_seconds{profile="<profile>"} now shows the new
                  NotAfter on every replica and that mail still goes out (sign-in logs show the new
                  certificate thumbprint under the service principal sign-ins). With a subPath mount,
                  or an inline secret, restart instead: kubectl -n mail rollout restart deployment/mailworker.
      3. -Remove -Thumbprint <old>   removes the old certificate. Refuses to remove the last valid one
                  unless -Force.
    Entra ID changes to credentials apply within minutes; cached access tokens (about 1 hour) stay valid
    until they expire, so removing the old certificate does not break tokens already issued.

.PARAMETER AppName
    mailworker app name; the app registration is "mailworker-<AppName>".
.PARAMETER List
    List the certificates on the app registration with thumbprint and validity.
.PARAMETER Add
    Add a certificate (with -CertificatePath or -CreateCertificate).
.PARAMETER Remove
    Remove the certificate with -Thumbprint.
.PARAMETER Force
    Allow removing the last currently valid certificate.

.EXAMPLE
    ./Update-MailworkerCertificate.ps1 -AppName billing -List
.EXAMPLE
    ./Update-MailworkerCertificate.ps1 -AppName billing -Add -CreateCertificate -OutputDirectory ./secrets
.EXAMPLE
    ./Update-MailworkerCertificate.ps1 -AppName billing -Remove -Thumbprint 0123ABCD... -WhatIf
#>
[CmdletBinding(SupportsShouldProcess, DefaultParameterSetName = 'List')]
param(
    [Parameter(Mandatory)]
    [ValidatePattern('^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$')]
    [string] $AppName,

    [Parameter(ParameterSetName = 'List')]
    [switch] $List,

    [Parameter(Mandatory, ParameterSetName = 'AddUpload')]
    [Parameter(Mandatory, ParameterSetName = 'AddCreate')]
    [switch] $Add,

    [Parameter(Mandatory, ParameterSetName = 'AddUpload')]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Leaf })]
    [string] $CertificatePath,

    [Parameter(Mandatory, ParameterSetName = 'AddCreate')]
    [switch] $CreateCertificate,

    [Parameter(ParameterSetName = 'AddCreate')]
    [string] $OutputDirectory = (Get-Location).Path,

    [Parameter(ParameterSetName = 'AddCreate')]
    [ValidateRange(1, 24)]
    [int] $ValidityMonths = 12,

    [Parameter(Mandatory, ParameterSetName = 'Remove')]
    [switch] $Remove,

    [Parameter(Mandatory, ParameterSetName = 'Remove')]
    [ValidatePattern('^[0-9A-Fa-f]{40}$')]
    [string] $Thumbprint,

    [Parameter(ParameterSetName = 'Remove')]
    [switch] $Force,

    [ValidatePattern('^[0-9a-fA-F-]{36}$')]
    [string] $TenantId,

    [ValidateSet('Global', 'USGov', 'USGovDoD', 'China')]
    [string] $Environment = 'Global'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot 'MailworkerEntra.psm1') -Force

$displayName = "mailworker-$AppName"
Connect-MailworkerGraph -Scopes 'Application.ReadWrite.All' -TenantId $TenantId -Environment $Environment | Out-Null
$app = Get-MailworkerApplication -DisplayName $displayName
if (-not $app) { throw "No app registration named '$displayName'. Create it with New-MailworkerApp.ps1." }

function Get-CertificateList {
    $now = (Get-Date).ToUniversalTime()
    @((Get-MgApplication -ApplicationId $app.Id -Property 'id,keyCredentials').KeyCredentials) | Where-Object { $_ } |
        ForEach-Object {
            [pscustomobject]@{
                Thumbprint  = Get-KeyThumbprint $_
                KeyId       = $_.KeyId
                DisplayName = $_.DisplayName
                NotBefore   = $_.StartDateTime
                NotAfter    = $_.EndDateTime
                DaysLeft    = [math]::Floor(($_.EndDateTime - $now).TotalDays)
                ValidNow    = ($_.StartDateTime -le $now -and $_.EndDateTime -gt $now)
            }
        } | Sort-Object NotAfter
}

switch -Wildcard ($PSCmdlet.ParameterSetName) {
    'List' { Get-CertificateList }
    'Add*' {
        if ($CreateCertificate) {
            $created = New-MailworkerCertificate -Name $displayName -OutputDirectory $OutputDirectory -ValidityMonths $ValidityMonths
            if (-not $created) { return }
            $cert = $created.Certificate
        }
        else { $cert = Read-MailworkerCertificate -Path $CertificatePath }
        Add-MailworkerKeyCredential -Application $app -Certificate $cert
        Write-Host ''
        Write-Host 'Both certificates are valid now. Next:'
        if ($CreateCertificate) {
            Write-Host "  kubectl -n mail create secret generic mailworker-credentials --from-file=$AppName.pem=$($created.PemPath) ... --dry-run=client -o yaml | kubectl apply -f -"
            Write-Host '    (include the .pem of every other profile in the same Secret)'
        }
        Write-Host '  wait until every replica logs "credential reloaded" with the new thumbprint (about 2 minutes; no restart needed)'
        Write-Host "  then: ./Update-MailworkerCertificate.ps1 -AppName $AppName -Remove -Thumbprint <old thumbprint>"
        Get-CertificateList
    }
    'Remove' {
        $certs = @(Get-CertificateList)
        $target = $certs | Where-Object { $_.Thumbprint -eq $Thumbprint.ToUpperInvariant() } | Select-Object -First 1
        if (-not $target) {
            Write-Host "Certificate $Thumbprint is not on $displayName (already removed?): nothing to do."
            return
        }
        $othersValid = @($certs | Where-Object { $_.Thumbprint -ne $target.Thumbprint -and $_.ValidNow })
        if (-not $othersValid -and -not $Force) {
            throw "Certificate $Thumbprint is the last valid certificate of $displayName; removing it stops all mail of this profile. Use -Force if that is intended (offboarding)."
        }
        # @(...) around the whole pipeline: an empty array when nothing is kept (-Force on the last
        # certificate), not $null, which @($keep) would turn into a one-element array holding $null.
        $keep = @(@((Get-MgApplication -ApplicationId $app.Id -Property 'id,keyCredentials').KeyCredentials) |
            Where-Object { $_ -and $_.KeyId -ne $target.KeyId } |
            ForEach-Object { @{ KeyId = $_.KeyId; Type = $_.Type; Usage = $_.Usage; DisplayName = $_.DisplayName
                                CustomKeyIdentifier = $_.CustomKeyIdentifier; StartDateTime = $_.StartDateTime; EndDateTime = $_.EndDateTime } })
        if ($PSCmdlet.ShouldProcess($displayName, "Remove certificate $Thumbprint (expires $($target.NotAfter))")) {
            Update-MgApplication -ApplicationId $app.Id -KeyCredentials $keep
            Write-Host "Removed certificate $Thumbprint from $displayName."
        }
        Get-CertificateList
    }
}
